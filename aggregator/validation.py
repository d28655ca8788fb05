"""Checks an upload passes before it is accepted (numpy only).

The format, metadata and shared-only names are :func:`fedfr.fl.wire.decode_update`'s checks;
here the update is held against the round's base model: the same backbone keys, shapes and
dtypes, public embedding rows of the right width with row numbers inside the matrix, every
value finite, and an update norm ``||update - base|| / ||base||`` under the bound. Each
failure is a :class:`~aggregator.problems.Problem` with its own reason.
"""

from __future__ import annotations

import numpy as np

from aggregator.problems import bad_request
from fedfr.fl import BACKBONE_PREFIX, PUBLIC_INDEX_KEY, PUBLIC_ROWS_KEY, GlobalModel
from fedfr.fl.wire import UpdateEnvelope


def shared_spec(model: GlobalModel) -> dict:
    """What an update for ``model`` must look like (stored with the model version)."""
    tensors = {BACKBONE_PREFIX + k: [str(np.asarray(v).dtype), list(np.shape(v))]
               for k, v in model.backbone.items()}
    pub = model.public_embeddings
    return {"tensors": tensors,
            "public_rows": None if pub is None else int(pub.shape[0]),
            "public_dim": None if pub is None else int(pub.shape[1]),
            "public_dtype": None if pub is None else str(pub.dtype)}


def check_against_spec(env: UpdateEnvelope, spec: dict) -> None:
    """Keys, shapes, dtypes and finiteness of an update against its base model's spec."""
    arrays = env.update.arrays
    want = spec["tensors"]
    got = {k for k in arrays if k.startswith(BACKBONE_PREFIX)}
    missing, extra = sorted(set(want) - got), sorted(got - set(want))
    if missing or extra:
        raise bad_request("keys_mismatch", f"update tensors differ from the base model's: "
                          f"missing {missing[:5]} ({len(missing)}), unexpected {extra[:5]} "
                          f"({len(extra)})")
    for k, (dtype, shape) in want.items():
        v = arrays[k]
        if list(v.shape) != list(shape):
            raise bad_request("shape_mismatch", f"{k}: shape {list(v.shape)}, the base model "
                              f"has {list(shape)}")
        if str(v.dtype) != dtype:
            raise bad_request("dtype_mismatch", f"{k}: dtype {v.dtype}, the base model has "
                              f"{dtype}")
    if PUBLIC_ROWS_KEY in arrays:
        rows, index = arrays[PUBLIC_ROWS_KEY], arrays[PUBLIC_INDEX_KEY]
        if spec.get("public_rows") is None:
            raise bad_request("keys_mismatch", "update carries public embedding rows but the "
                              "base model has no public class embeddings")
        if rows.shape[1] != spec["public_dim"]:
            raise bad_request("shape_mismatch", f"{PUBLIC_ROWS_KEY}: width {rows.shape[1]}, "
                              f"the base model's embeddings have {spec['public_dim']}")
        if str(rows.dtype) != spec["public_dtype"]:
            raise bad_request("dtype_mismatch", f"{PUBLIC_ROWS_KEY}: dtype {rows.dtype}, the "
                              f"base model has {spec['public_dtype']}")
        if index.size and int(index.max()) >= spec["public_rows"]:
            raise bad_request("shape_mismatch", f"{PUBLIC_INDEX_KEY}: row {int(index.max())} "
                              f"outside the {spec['public_rows']} public classes")
    for k, v in arrays.items():
        if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
            raise bad_request("non_finite", f"{k}: holds NaN or infinite values")


def update_norm_ratio(env: UpdateEnvelope, base: GlobalModel) -> float:
    """``||update - base|| / ||base||`` over the floating tensors the update carries."""
    arrays = env.update.arrays
    diff = ref = 0.0
    for k, b in base.backbone.items():
        if not np.issubdtype(np.asarray(b).dtype, np.floating):
            continue
        u = arrays[BACKBONE_PREFIX + k]
        b64 = np.asarray(b, np.float64)
        diff += float(np.sum((u.astype(np.float64) - b64) ** 2))
        ref += float(np.sum(b64 ** 2))
    if PUBLIC_ROWS_KEY in arrays and base.public_embeddings is not None:
        idx = arrays[PUBLIC_INDEX_KEY]
        b64 = np.asarray(base.public_embeddings[idx], np.float64)
        diff += float(np.sum((arrays[PUBLIC_ROWS_KEY].astype(np.float64) - b64) ** 2))
        ref += float(np.sum(b64 ** 2))
    return float(np.sqrt(diff / ref)) if ref > 0 else float(np.sqrt(diff))


def check_norm(env: UpdateEnvelope, base: GlobalModel, bound: float) -> float:
    ratio = update_norm_ratio(env, base)
    if not ratio <= bound:
        raise bad_request("norm_bound", f"update norm ||update - base|| / ||base|| = "
                          f"{ratio:.4g} exceeds the bound {bound:g}")
    return ratio
