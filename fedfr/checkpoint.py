"""Backbone checkpoints: arcface_torch ``backbone.pth`` files and fedfr safetensors checkpoints.

Two formats, detected by content (never by file extension):

* arcface_torch ``backbone.pth``: a bare ``state_dict`` saved with ``torch.save`` (a zip archive
  starting with ``b"PK"``, or a legacy pickle); keys may carry DDP's ``module.`` prefix. It is read
  with ``torch.load(..., weights_only=True)`` so that no arbitrary object is ever unpickled.
* fedfr checkpoint: a safetensors file with the backbone under ``backbone.<key>``, extra tensors
  (e.g. ``head.public_class_embeddings``) under their own names, and string metadata ``format``
  (``"fedfr-checkpoint"``), ``format_version`` (``"1"``), ``arch``, ``embedding_size``,
  ``input_contract`` (JSON) and ``metadata`` (JSON of the user metadata).
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from fedfr.backbones import available_backbones, build_backbone, get_backbone_spec
from fedfr.data.contract import InputContract
from fedfr.errors import CheckpointError
from fedfr.io import atomic_path

logger = logging.getLogger(__name__)

__all__ = ["Checkpoint", "load_backbone", "read_checkpoint", "save_checkpoint"]

FORMAT = "fedfr-checkpoint"
FORMAT_VERSION = "1"
BACKBONE_PREFIX = "backbone."
_MAX_LISTED = 5


@dataclass(frozen=True)
class Checkpoint:
    """A fedfr checkpoint's content (CPU tensors, dtypes as saved).

    Attributes:
        arch: registered backbone name.
        embedding_size: the backbone's output dimension.
        contract: the input contract the backbone was trained with.
        backbone_state: the backbone ``state_dict`` (without the ``backbone.`` prefix).
        extra: the other tensors, by their full names.
        metadata: the user metadata given to :func:`save_checkpoint`.
    """

    arch: str
    embedding_size: int
    contract: InputContract
    backbone_state: dict[str, torch.Tensor]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    metadata: dict[str, object] = field(default_factory=dict)


def _sniff(path: Path) -> str:
    """``"safetensors"`` or ``"torch"``; raises CheckpointError for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "torch"
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= size - 8:
        return "safetensors"
    raise CheckpointError(
        f"{path} is neither a fedfr safetensors checkpoint nor a torch.save'd state dict "
        f"(empty, truncated or another format); re-save or re-download it"
    )


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a fedfr safetensors checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: if the file is unreadable, corrupt, an arcface ``.pth`` (use
            :func:`load_backbone` for those), or safetensors without fedfr metadata.
    """
    path = Path(path)
    if _sniff(path) == "torch":
        raise CheckpointError(
            f"{path} is a torch.save'd (arcface_torch .pth) state dict, not a fedfr checkpoint; "
            f"read it with fedfr.checkpoint.load_backbone(path, arch)"
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: {e}; the file is corrupt") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file without fedfr metadata (format={meta.get('format')!r});"
            f" write checkpoints with fedfr.checkpoint.save_checkpoint"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {meta.get('format_version')!r}; this fedfr "
            f"reads version {FORMAT_VERSION}: upgrade fedfr"
        )
    try:
        arch = meta["arch"]
        embedding_size = int(meta["embedding_size"])
        contract = InputContract.from_dict(json.loads(meta["input_contract"]))
        metadata = json.loads(meta.get("metadata", "{}"))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} has invalid fedfr metadata ({e!r}); re-save it") from e
    state = {
        k[len(BACKBONE_PREFIX):]: v for k, v in tensors.items() if k.startswith(BACKBONE_PREFIX)
    }
    return Checkpoint(
        arch=arch,
        embedding_size=embedding_size,
        contract=contract,
        backbone_state=_in_model_order(state, arch, embedding_size, contract.size),
        extra={k: v for k, v in tensors.items() if not k.startswith(BACKBONE_PREFIX)},
        metadata=metadata,
    )


def _in_model_order(
    state: dict[str, torch.Tensor], arch: str, embedding_size: int, input_size: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """``state`` reordered like ``build_backbone(arch).state_dict()`` (safetensors sorts keys);
    keys the model lacks (or an unregistered arch) keep the file's order, at the end."""
    try:
        with torch.device("meta"):
            order = build_backbone(arch, embedding_size=embedding_size, input_size=input_size)
        keys = [k for k in order.state_dict() if k in state]
    except Exception:  # unknown arch or factory error: reported by load_backbone, not here
        keys = []
    seen = set(keys)
    keys += [k for k in state if k not in seen]
    return {k: state[k] for k in keys}


def save_checkpoint(
    path: str | os.PathLike[str],
    backbone: nn.Module | Mapping[str, torch.Tensor],
    *,
    arch: str,
    embedding_size: int,
    contract: InputContract | None = None,
    extra_tensors: Mapping[str, torch.Tensor] | None = None,
    metadata: Mapping[str, str | int | float] | None = None,
) -> None:
    """Atomically write a fedfr safetensors checkpoint (temp file in the same dir + os.replace).

    Args:
        path: destination file.
        backbone: the module or its ``state_dict``; stored as ``backbone.<key>`` (CPU,
            contiguous, dtypes kept: float32 weights, int64 ``num_batches_tracked``).
        arch: registered backbone name.
        embedding_size: the backbone's output dimension.
        contract: the input contract (stored as JSON); defaults to the arch's registered
            contract (``ARCFACE_CONTRACT`` for the arcface archs, 64x64 for the tiny ones).
        extra_tensors: other tensors, stored under their names (must not start with
            ``backbone.``), e.g. ``{"head.public_class_embeddings": (C, D) float32}``.
        metadata: JSON-serializable user metadata (str/int/float values).

    Raises:
        UnknownNameError: if ``arch`` is not registered.
        CheckpointError: if the backbone's keys/shapes do not fit ``arch`` built with
            ``embedding_size`` and ``contract.size`` (the file could not be loaded back), on an
            extra tensor named ``backbone.*``, or on non-JSON metadata.
    """
    contract = contract if contract is not None else get_backbone_spec(arch).contract
    path = Path(path)
    state = backbone.state_dict() if isinstance(backbone, nn.Module) else backbone
    with torch.device("meta"):
        ref = build_backbone(arch, embedding_size=embedding_size, input_size=contract.size)
    _check_state(path, arch, ref, state, strict=True, suggest=False, saving=True)
    tensors = {BACKBONE_PREFIX + k: v for k, v in state.items()}
    for name, t in (extra_tensors or {}).items():
        if name.startswith(BACKBONE_PREFIX):
            raise CheckpointError(f"extra tensor name {name!r} must not start with 'backbone.'")
        tensors[name] = t
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}
    try:
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "arch": arch,
            "embedding_size": str(int(embedding_size)),
            "input_contract": json.dumps(contract.to_dict()),
            "metadata": json.dumps(dict(metadata or {})),
        }
    except TypeError as e:
        raise CheckpointError(f"checkpoint metadata must be JSON-serializable: {e}") from e
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=meta)
    logger.info("saved %s checkpoint (%d tensors) to %s", arch, len(tensors), path)


def _load_torch_state(path: Path, map_location: str | torch.device) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # UnpicklingError for disallowed objects, RuntimeError for bad zips
        raise CheckpointError(
            f"cannot load {path} as a weights-only torch state dict ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); it is corrupt or contains pickled "
            f"objects: re-save it with torch.save(model.state_dict(), path)"
        ) from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path} does not hold a state dict of tensors; save one with "
            f"torch.save(model.state_dict(), path)"
        )
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _matching_arch(state: Mapping[str, torch.Tensor]) -> str | None:
    """The arcface-compatible arch whose state-dict keys and shapes equal ``state``'s, if any."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for name in available_backbones():
        if not get_backbone_spec(name).arcface_compatible:
            continue
        with torch.device("meta"):
            ref = build_backbone(name).state_dict()
        if shapes == {k: tuple(v.shape) for k, v in ref.items()}:
            return name
    return None


def _check_state(
    path: Path, arch: str, model: nn.Module, state: Mapping[str, torch.Tensor], strict: bool,
    suggest: bool, saving: bool = False,
) -> None:
    """Raise CheckpointError listing missing/unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items() if k in state and state[k].shape != v.shape
    ]
    problems = []
    if strict and missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[:_MAX_LISTED]})")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:_MAX_LISTED]})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches (e.g. {mismatched[:_MAX_LISTED]})")
    if not problems:
        if missing or unexpected:
            logger.warning("%s: %d missing, %d unexpected keys ignored (strict=False)",
                           path, len(missing), len(unexpected))
        return
    if saving:
        raise CheckpointError(
            f"not saving {path}: the backbone does not fit {arch!r} with embedding_size="
            f"{model.embedding_size} and input size {model.input_size}: {'; '.join(problems)}; "
            f"pass the backbone's arch, embedding_size and contract"
        )
    hint = "pass the arch the file was trained with"
    if suggest:
        match = _matching_arch(state)
        if match is not None and match != arch:
            hint = f"its keys match arch {match!r}: use load_backbone(path, {match!r})"
    raise CheckpointError(f"{path} does not fit backbone {arch!r}: {'; '.join(problems)}; {hint}")


def load_backbone(
    path: str | os.PathLike[str],
    arch: str,
    *,
    strict: bool = True,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Build ``arch`` and load weights from an arcface_torch ``.pth`` or a fedfr checkpoint.

    For fedfr checkpoints the backbone is built with the checkpoint's embedding size and input
    size. The module is returned in train mode on ``map_location``'s device; call ``.eval()``
    before extracting embeddings.

    Raises:
        UnknownNameError: if ``arch`` is not registered.
        CheckpointError: unreadable/corrupt file, a fedfr checkpoint for another arch, missing or
            unexpected keys (when ``strict``), or shape mismatches; the message names the file
            and, for arcface ``.pth`` files of another arch, the arch that matches.
    """
    get_backbone_spec(arch)
    path = Path(path)
    if _sniff(path) == "torch":
        state = _load_torch_state(path, map_location)
        model = build_backbone(arch)
        suggest = True
    else:
        ckpt = read_checkpoint(path)
        if ckpt.arch != arch:
            raise CheckpointError(
                f"{path}: checkpoint is for {ckpt.arch!r}, not {arch!r}; "
                f"use load_backbone(path, {ckpt.arch!r})"
            )
        state = ckpt.backbone_state
        model = build_backbone(arch, embedding_size=ckpt.embedding_size,
                               input_size=ckpt.contract.size)
        suggest = False
    _check_state(path, arch, model, state, strict, suggest)
    model.load_state_dict(state, strict=False)
    model.to(map_location)
    logger.info("loaded %s weights from %s", arch, path)
    return model
