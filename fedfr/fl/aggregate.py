"""FedAvg and the per-row average of public class embeddings, as streaming accumulators.

The server's step of FedFR (PRODUCT.md §2, step 5): the backbones of a round's devices are
averaged weighted by their sample counts, and every public class embedding row is averaged over
the devices that trained it (rows nobody trained keep their current value). Both accumulators
take one update at a time and hold one running sum — O(model) memory whatever the number of
updates — so the aggregator can fold uploads in as they arrive.

Integer tensors (BatchNorm's ``num_batches_tracked``): **not averaged**. They are counters,
not statistics — a weighted mean of counts is a fractional count that no device ever had — and
PyTorch reads them only when a BatchNorm layer has ``momentum=None`` (cumulative averaging),
which no registered backbone uses. The aggregate keeps the **maximum** over the updates, which
is what a single device that had run every step would hold. Floating tensors (weights, BN
running mean and variance) are averaged in float64 and returned in their input dtype.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from fedfr.fl.params import PUBLIC_INDEX_KEY, PUBLIC_ROWS_KEY, SharedUpdate


class WeightedAverage:
    """Streaming weighted average of ``{name: array}`` updates with the same keys and shapes.

    >>> avg = WeightedAverage()
    >>> avg.add({"w": np.array([1.0, 2.0])}, 1)
    >>> avg.add({"w": np.array([3.0, 6.0])}, 3)
    >>> avg.result()["w"]
    array([2.5, 5. ])
    """

    def __init__(self) -> None:
        self._sum: dict[str, np.ndarray] = {}
        self._dtype: dict[str, np.dtype] = {}
        self.total_weight = 0.0
        self.count = 0

    def add(self, arrays: Mapping[str, np.ndarray], weight: float) -> None:
        """Fold one update in.

        Raises:
            ValueError: non-positive or non-finite weight; keys, shapes or dtypes that differ
                from the first update's; non-finite values (the accumulator is unchanged).
        """
        weight = float(weight)
        if not (weight > 0 and np.isfinite(weight)):
            raise ValueError(f"update weight must be a positive finite number, got {weight}")
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        if self.count:
            missing = sorted(set(self._sum) - set(arrays))
            extra = sorted(set(arrays) - set(self._sum))
            if missing or extra:
                raise ValueError(f"update keys differ: missing {missing[:5]}, extra {extra[:5]}")
        for k, v in arrays.items():
            if not (np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype, np.integer)):
                raise ValueError(f"{k}: unsupported dtype {v.dtype}")
            if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
                raise ValueError(f"{k}: non-finite values")
            if self.count and (v.shape != self._sum[k].shape or v.dtype != self._dtype[k]):
                raise ValueError(
                    f"{k}: {v.dtype} {v.shape} does not match {self._dtype[k]} "
                    f"{self._sum[k].shape} of the first update"
                )
        # Weights are kept relative to the first update's, so one update is returned exactly
        # (x * 1 / 1), and sums of similar weights stay near 1.
        if not self.count:
            self._unit = weight
        rel = weight / self._unit
        for k, v in arrays.items():  # validated: now mutate
            if np.issubdtype(v.dtype, np.integer):
                self._sum[k] = v.copy() if not self.count else np.maximum(self._sum[k], v)
            else:
                # one float64 temporary, summed in place (the sums are ours: made here)
                term = np.multiply(v, rel, dtype=np.float64)
                if not self.count:
                    self._sum[k] = term
                else:
                    self._sum[k] += term
            self._dtype[k] = v.dtype
        self._rel_total = rel if not self.count else self._rel_total + rel
        self.total_weight += weight
        self.count += 1

    def result(self) -> dict[str, np.ndarray]:
        """The weighted average (float keys) / maximum (integer keys), input dtypes.

        Raises:
            ValueError: nothing was added.
        """
        if not self.count:
            raise ValueError("no update to average")
        out = {}
        for k, s in self._sum.items():
            # np.asarray: arithmetic on 0-d arrays yields numpy scalars; keep arrays.
            if np.issubdtype(self._dtype[k], np.integer):
                out[k] = np.array(s, dtype=self._dtype[k])
            else:
                out[k] = np.asarray(s / self._rel_total).astype(self._dtype[k])
        return out


class RowAverage:
    """Streaming per-row average of a (C, D) matrix over the updates that carry each row.

    Every update gives row numbers ``index`` (K,) and their values ``rows`` (K, D); a row's
    result is the (weighted) mean over the updates that carried it, and rows no update
    carried keep the base matrix's value.
    """

    def __init__(self, num_rows: int, dim: int) -> None:
        if num_rows < 0 or dim < 1:
            raise ValueError(f"need num_rows >= 0 and dim >= 1, got {num_rows}, {dim}")
        self._sum = np.zeros((num_rows, dim), np.float64)
        self._weight = np.zeros(num_rows, np.float64)

    @property
    def shape(self) -> tuple[int, int]:
        return self._sum.shape  # type: ignore[return-value]

    def add(self, index: np.ndarray, rows: np.ndarray, weight: float = 1.0) -> None:
        """Fold one device's rows in.

        Raises:
            ValueError: shapes that do not fit, repeated or out-of-range row numbers,
                non-finite values, or a non-positive weight (nothing is added).
        """
        index, rows, weight = self.check(index, rows, weight)
        self._sum[index] += rows.astype(np.float64) * weight
        self._weight[index] += weight

    def check(self, index: np.ndarray, rows: np.ndarray, weight: float = 1.0
              ) -> tuple[np.ndarray, np.ndarray, float]:
        """Raise what :meth:`add` would raise, without adding; ``(index, rows, weight)`` as
        arrays and a float."""
        index = np.asarray(index)
        rows = np.asarray(rows)
        weight = float(weight)
        if not (weight > 0 and np.isfinite(weight)):
            raise ValueError(f"row weight must be a positive finite number, got {weight}")
        if index.ndim != 1 or rows.shape != (len(index), self._sum.shape[1]):
            raise ValueError(
                f"rows must be (K, {self._sum.shape[1]}) with a (K,) index; got {rows.shape} "
                f"and {index.shape}"
            )
        if not np.issubdtype(index.dtype, np.integer):
            raise ValueError(f"row index must be integers, got {index.dtype}")
        if index.size and (index.min() < 0 or index.max() >= self._sum.shape[0]):
            raise ValueError(f"row index outside 0..{self._sum.shape[0] - 1}")
        if len(np.unique(index)) != len(index):
            raise ValueError("row index has repeated rows")
        if not np.isfinite(rows).all():
            raise ValueError("public embedding rows hold non-finite values")
        return index, rows, weight

    @property
    def rows_trained(self) -> np.ndarray:
        """Row numbers at least one update carried."""
        return np.flatnonzero(self._weight > 0)

    def apply(self, base: np.ndarray) -> np.ndarray:
        """``base`` (C, D) with every carried row replaced by its average (a new array)."""
        base = np.asarray(base)
        if base.shape != self._sum.shape:
            raise ValueError(f"base matrix {base.shape} does not match {self._sum.shape}")
        out = base.copy()
        hit = self._weight > 0
        out[hit] = (self._sum[hit] / self._weight[hit, None]).astype(base.dtype)
        return out


class RoundAggregate:
    """One round's aggregation: FedAvg of the non-public arrays + per-row public embeddings.

    Args:
        public_embeddings: the base model's (C, D) public class embedding matrix, or ``None``
            when the model has none (then updates must not carry public rows).
        row_weighting: ``"uniform"`` (each device counts once per row it trained: the paper's
            "average over the devices that trained it") or ``"samples"`` (weighted by the
            device's sample count).
    """

    def __init__(self, public_embeddings: np.ndarray | None = None, *,
                 row_weighting: str = "uniform") -> None:
        if row_weighting not in ("uniform", "samples"):
            raise ValueError(f"row_weighting must be 'uniform' or 'samples', got {row_weighting!r}")
        self._avg = WeightedAverage()
        self._base = None if public_embeddings is None else np.asarray(public_embeddings)
        self._rows = None if self._base is None else RowAverage(*self._base.shape)
        self._row_weighting = row_weighting
        self.num_samples = 0
        self._metric_sum: dict[str, float] = {}
        self._metric_samples: dict[str, int] = {}

    @property
    def count(self) -> int:
        return self._avg.count

    def add(self, update: SharedUpdate) -> None:
        """Fold one device's update in (validated first; a rejected update changes nothing)."""
        arrays = dict(update.arrays)
        index = arrays.pop(PUBLIC_INDEX_KEY, None)
        rows = arrays.pop(PUBLIC_ROWS_KEY, None)
        if rows is not None and self._rows is None:
            raise ValueError("update carries public embedding rows but the model has none")
        if rows is not None:  # validate the rows before folding anything in
            self._rows.check(index, rows)
        self._avg.add(arrays, update.num_samples)
        if rows is not None:
            w = 1.0 if self._row_weighting == "uniform" else float(update.num_samples)
            self._rows.add(index, rows, w)
        self.num_samples += int(update.num_samples)
        for k, v in update.metrics.items():
            n = int(update.num_samples)
            self._metric_sum[k] = self._metric_sum.get(k, 0.0) + float(v) * n
            self._metric_samples[k] = self._metric_samples.get(k, 0) + n

    def result(self) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """``(averaged arrays, new public embedding matrix or None)``."""
        arrays = self._avg.result()
        public = None if self._base is None else self._rows.apply(self._base)
        return arrays, public

    @property
    def metrics(self) -> dict[str, float]:
        """Sample-weighted means of the devices' reported metrics (aggregates only); a metric
        only some devices reported is averaged over those devices."""
        return {k: v / self._metric_samples[k] for k, v in self._metric_sum.items()}


def fedavg(updates: Sequence[Mapping[str, np.ndarray]],
           weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Weighted average of ``{name: array}`` updates (integers: maximum; see module doc).

    Raises:
        ValueError: no update, a length mismatch, or inconsistent keys/shapes/dtypes.
    """
    if len(updates) != len(weights):
        raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
    avg = WeightedAverage()
    for u, w in zip(updates, weights, strict=True):
        avg.add(u, w)
    return avg.result()


def aggregate_updates(updates: Iterable[SharedUpdate],
                      public_embeddings: np.ndarray | None = None, *,
                      row_weighting: str = "uniform",
                      ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """:class:`RoundAggregate` over an iterable of updates (consumed one at a time)."""
    agg = RoundAggregate(public_embeddings, row_weighting=row_weighting)
    for u in updates:
        agg.add(u)
    return agg.result()
