"""Federated parameters and aggregation (numpy only: the aggregator imports this without torch).

- :mod:`fedfr.fl.params` — which tensors of a device's state are *shared* (uploaded) and which
  are *private* (never leave the device), and the names they travel under.
- :mod:`fedfr.fl.aggregate` — FedAvg over ``{name: array}`` weighted by sample count, the
  per-row average of public class embeddings, both in a streaming form (O(model) memory).
"""

from fedfr.fl.aggregate import (
    RoundAggregate,
    RowAverage,
    WeightedAverage,
    aggregate_updates,
    fedavg,
)
from fedfr.fl.model import GlobalModel
from fedfr.fl.params import (
    BACKBONE_PREFIX,
    PRIVATE_PREFIXES,
    PUBLIC_INDEX_KEY,
    PUBLIC_ROWS_KEY,
    SHARED_PREFIXES,
    SharedUpdate,
    backbone_arrays,
    check_shared,
    is_shared,
    split_state,
)

__all__ = [
    "BACKBONE_PREFIX",
    "PRIVATE_PREFIXES",
    "PUBLIC_INDEX_KEY",
    "PUBLIC_ROWS_KEY",
    "SHARED_PREFIXES",
    "GlobalModel",
    "RoundAggregate",
    "RowAverage",
    "SharedUpdate",
    "WeightedAverage",
    "aggregate_updates",
    "backbone_arrays",
    "check_shared",
    "fedavg",
    "is_shared",
    "split_state",
]
