"""The aggregator's settings: one object, filled from arguments or ``FEDFR_*`` environment
variables (uvicorn's worker processes read the environment the ``serve`` command set)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

ENV_PREFIX = "FEDFR_"


@dataclass(frozen=True)
class Settings:
    """Everything the service needs to run.

    Attributes:
        data_dir: where the blob store, the default SQLite file and ``admin_token`` live.
        database_url: SQLAlchemy URL; default ``sqlite:///DATA_DIR/aggregator.db``.
        admin_token: the operators' bearer token; ``None``: read ``DATA_DIR/admin_token``.
        max_upload_bytes: hard cap on an upload's body; ``0``: twice the base model's shared
            tensors plus 1 MiB (an update is never larger than the model it trains).
        max_update_norm_ratio: an update is refused when ``||update - base|| / ||base||``
            over its floating tensors exceeds this (a diverged or malicious device).
        checkin_retry_after: seconds a device without work is told to wait.
        sweep_interval: seconds between deadline checks in the background.
        aggregation_lease: seconds after which a round left ``aggregating`` by a crashed
            process may be taken over by another (a live aggregation renews its lease).
        keep_updates: keep update blobs after their round aggregated (default: delete them).
        auto_migrate: apply database migrations when the app starts.
        publish_metric: the validation metric the publication policy compares:
            ``tar@far=1e-01|1e-02|1e-03``, ``eer`` (lower is better), ``auc`` or ``rank1``.
        publish_max_regression: a round's new version is rejected (not made current) when its
            ``publish_metric`` on the validation set is worse than its base version's by more
            than this (absolute, e.g. ``0.02``); ``None``: always publish. A round may set its
            own (``max_regression`` when it starts); this is the default it gets.
        evaluation_device: torch device the validation set is embedded on (``cpu``,
            ``cuda``, ``cuda:1``).
        evaluation_batch_size: images per forward pass when evaluating (bounds the memory
            evaluation takes; the lease is renewed between batches).
    """

    data_dir: Path
    database_url: str | None = None
    admin_token: str | None = None
    max_upload_bytes: int = 0
    max_update_norm_ratio: float = 1.0
    checkin_retry_after: int = 30
    sweep_interval: float = 2.0
    aggregation_lease: float = 30.0
    keep_updates: bool = False
    auto_migrate: bool = True
    publish_metric: str = "tar@far=1e-02"
    publish_max_regression: float | None = None
    evaluation_device: str = "cpu"
    evaluation_batch_size: int = 128

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "publish_metric", parse_metric(self.publish_metric).name)
        if self.publish_max_regression is not None:
            check_max_regression(self.publish_max_regression)
        if self.max_upload_bytes < 0:
            raise ValueError("max_upload_bytes must be >= 0")
        if not self.max_update_norm_ratio > 0:
            raise ValueError("max_update_norm_ratio must be > 0")
        for name in ("sweep_interval", "aggregation_lease"):
            if not 0 < getattr(self, name) < float("inf"):
                raise ValueError(f"{name} must be a positive number of seconds")
        if self.evaluation_batch_size < 1:
            raise ValueError("evaluation_batch_size must be >= 1")
        if self.checkin_retry_after < 1:
            raise ValueError("checkin_retry_after must be >= 1 second")

    @property
    def url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'aggregator.db').resolve()}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin_token"

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The environment variables that :meth:`from_env` reads back into these settings."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None:
                out[ENV_PREFIX + f.name.upper()] = str(int(v) if isinstance(v, bool) else v)
        return out

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from ``FEDFR_<FIELD>`` variables (``FEDFR_DATA_DIR`` is required)."""
        env = dict(os.environ if env is None else env)
        kw: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            typ = str(f.type)
            try:
                if "bool" in typ:
                    v = raw.strip().lower()
                    if v not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                        raise ValueError(v)
                    kw[f.name] = v in ("1", "true", "yes", "on")
                elif typ.startswith("int"):
                    kw[f.name] = int(raw)
                elif typ.startswith("float"):
                    kw[f.name] = float(raw)
                else:
                    kw[f.name] = raw
            except ValueError:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a valid "
                                 f"{typ}") from None
        kw.update(overrides)
        if "data_dir" not in kw:
            raise ValueError(f"{ENV_PREFIX}DATA_DIR is not set (the aggregator's data directory)")
        return cls(**kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class MetricSpec:
    """A validation metric the publication policy compares (see :func:`parse_metric`)."""

    name: str  # canonical: tar@far=1e-02 | eer | auc | rank1
    higher_is_better: bool

    def value(self, metrics: dict | None) -> float | None:
        """This metric in a validation report (``None``: absent or not resolvable)."""
        if not metrics:
            return None
        if self.name.startswith("tar@far="):
            v = (metrics.get("tar_at_far") or {}).get(self.name.split("=", 1)[1])
        else:
            v = metrics.get(self.name)
        return None if v is None else float(v)

    def regression(self, candidate: float, base: float) -> float:
        """How much worse ``candidate`` is than ``base`` (negative: better)."""
        return base - candidate if self.higher_is_better else candidate - base


_FAR_KEYS = ("1e-01", "1e-02", "1e-03")  # fedfr.evaluation.VALIDATION_FARS, formatted


def parse_metric(spec: str) -> MetricSpec:
    """``tar@far=1e-02`` (or ``=0.01``), ``eer``, ``auc`` or ``rank1``.

    Raises:
        ValueError: another metric, or a FAR the validation report does not compute.
    """
    raw = str(spec).strip().lower()
    if raw in ("eer", "auc", "rank1"):
        return MetricSpec(raw, raw != "eer")
    if raw.startswith("tar@far="):
        try:
            key = f"{float(raw.split('=', 1)[1]):.0e}"
        except ValueError:
            key = ""
        if key in _FAR_KEYS:
            return MetricSpec(f"tar@far={key}", True)
    raise ValueError(f"publish metric {spec!r}: use tar@far=1e-01, tar@far=1e-02, "
                     f"tar@far=1e-03, eer, auc or rank1")


def check_max_regression(value: float) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"max_regression must be a finite number >= 0, got {value!r}")
    return float(value)
