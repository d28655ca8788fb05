"""The shared/private split of a device's state, and the shared update that leaves a device.

A device's full state is one flat ``{name: array}`` mapping whose names say where each tensor
belongs. Only names under :data:`SHARED_PREFIXES` may ever be uploaded:

=============================  ==========================================  =========
name                           what                                        kind
=============================  ==========================================  =========
``backbone.<key>``             the local backbone's state dict             shared
``public_embeddings.rows``     (K, D) public class embedding rows trained  shared
``public_embeddings.index``    (K,) int64 their row numbers in the matrix  shared
``local.identity_weights``     (L, D) the device's identity weights        private
``dfc.converter``              (D, D) the DFC converter                    private
``dfc.converter_bias``         (D,) its bias (optional)                    private
``dfc.binary_weights``         (L, D) DFC per-identity binary classifiers  private
``prev_local.<key>``           the previous round's local backbone         private
=============================  ==========================================  =========

:func:`split_state` fails closed: a name under neither list is an error, so a new private
tensor cannot leak by being forgotten here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

BACKBONE_PREFIX = "backbone."
PUBLIC_ROWS_KEY = "public_embeddings.rows"
PUBLIC_INDEX_KEY = "public_embeddings.index"

#: Names (exact, or prefixes ending in ".") that may leave a device.
SHARED_PREFIXES: tuple[str, ...] = (BACKBONE_PREFIX, PUBLIC_ROWS_KEY, PUBLIC_INDEX_KEY)
#: Names that never leave a device.
PRIVATE_PREFIXES: tuple[str, ...] = (
    "local.", "dfc.", "prev_local.", "optimizer.",
)


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    """``name`` equals an exact entry, or extends a ``"prefix."`` entry by a non-empty key."""
    return any(name == p if not p.endswith(".") else (name.startswith(p) and len(name) > len(p))
               for p in prefixes)


def is_shared(name: str) -> bool:
    """Whether a tensor of this name may be uploaded."""
    return _matches(name, SHARED_PREFIXES) and not _matches(name, PRIVATE_PREFIXES)


def split_state(state: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray],
                                                           dict[str, np.ndarray]]:
    """Split a device's full state into ``(shared, private)``.

    Raises:
        ValueError: a name that is neither shared nor private (listed), so nothing unknown is
            ever uploaded by default.
    """
    shared: dict[str, np.ndarray] = {}
    private: dict[str, np.ndarray] = {}
    unknown = []
    for name, value in state.items():
        if is_shared(name):
            shared[name] = value
        elif _matches(name, PRIVATE_PREFIXES):
            private[name] = value
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(
            f"state names neither shared nor private: {sorted(unknown)[:5]}; name them under "
            f"{SHARED_PREFIXES} (uploaded) or {PRIVATE_PREFIXES} (kept on the device)"
        )
    return shared, private


def check_shared(arrays: Mapping[str, np.ndarray]) -> None:
    """Raise ``ValueError`` unless every name is shared and the public rows are consistent.

    The device SDK calls it before an upload and the aggregator before accepting one.
    """
    bad = [n for n in arrays if not is_shared(n)]
    if bad:
        raise ValueError(f"not shareable (private or unknown) tensors in an update: {bad[:5]}")
    has_rows, has_index = PUBLIC_ROWS_KEY in arrays, PUBLIC_INDEX_KEY in arrays
    if has_rows != has_index:
        raise ValueError(f"{PUBLIC_ROWS_KEY} and {PUBLIC_INDEX_KEY} must be sent together")
    if has_rows:
        rows, index = np.asarray(arrays[PUBLIC_ROWS_KEY]), np.asarray(arrays[PUBLIC_INDEX_KEY])
        if rows.ndim != 2 or index.shape != (rows.shape[0],):
            raise ValueError(
                f"{PUBLIC_ROWS_KEY} must be (K, D) with a (K,) {PUBLIC_INDEX_KEY}; got "
                f"{rows.shape} and {index.shape}"
            )
        if not np.issubdtype(index.dtype, np.integer):
            raise ValueError(f"{PUBLIC_INDEX_KEY} must be integers, got {index.dtype}")
        if len(np.unique(index)) != len(index) or (index.size and index.min() < 0):
            raise ValueError(f"{PUBLIC_INDEX_KEY} must hold distinct row numbers >= 0")


def backbone_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The ``backbone.*`` entries with the prefix removed (a backbone state dict)."""
    n = len(BACKBONE_PREFIX)
    return {k[n:]: v for k, v in arrays.items() if k.startswith(BACKBONE_PREFIX)}


@dataclass(frozen=True, eq=False)
class SharedUpdate:
    """What a device sends after a round: shared arrays, a sample count, aggregate metrics.

    Attributes:
        arrays: ``{name: array}`` with shared names only (checked on construction).
        num_samples: images the device trained on (its FedAvg weight); > 0.
        metrics: aggregate training statistics (loss, accuracy...) — numbers only, nothing
            per identity.
    """

    arrays: dict[str, np.ndarray]
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_shared(self.arrays)
        if int(self.num_samples) <= 0:
            raise ValueError(f"num_samples must be > 0, got {self.num_samples}")
        clean = {}
        for k, v in self.metrics.items():
            if not isinstance(v, int | float | np.integer | np.floating) or isinstance(
                    v, bool | np.bool_):
                raise ValueError(f"metric {k!r} must be a number, got {type(v).__name__}")
            clean[str(k)] = float(v)
        object.__setattr__(self, "metrics", clean)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (what an upload carries, before the container's header)."""
        return int(sum(np.asarray(v).nbytes for v in self.arrays.values()))
