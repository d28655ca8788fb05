"""ONNX export of a recognizer: a backbone alone (generic) or backbone → DFC converter
(personalized), followed by L2 normalization.

The exported graph always takes what every crop on disk is: ``data`` float32 (N, 3, 112, 112),
normalized per the input contract (``(x - mean) / std``; no normalization inside the graph by
default, as insightface's tools expect), dynamic batch; it returns ``embedding`` float32 (N, D),
L2-normalized. A backbone trained at another size (the 64x64 CPU variants) gets the resize of
:func:`fedfr.train.embedding.preprocess` inside the graph, as two constant matrix products —
exactly the same antialiased bilinear weights, and plain ``MatMul`` every consumer runs (an
antialiased ``Resize`` node loads neither in OpenCV's DNN nor everywhere else). A backbone with
another crop geometry or per-channel normalization (``dlib_r34``: dlib's 150x150 chip, means per
channel, /256) takes ``data`` normalized by 127.5 / 127.5 and, inside the graph, goes back to
pixels, resamples the ArcFace crop into its chip (the same matrices as training) and normalizes
per channel.

``uint8_input=True`` exports the phone-friendly variant: ``data`` uint8 (N, 112, 112, 3) RGB,
cast and normalized in the graph.

Metadata (``metadata_props``): ``fedfr.format``, ``fedfr.arch``, ``fedfr.embedding_size``,
``fedfr.input_contract`` (JSON, what ``data`` takes), ``fedfr.backbone_contract`` (JSON),
``fedfr.model_version``, ``fedfr.personalized``, ``fedfr.input_dtype``, plus any extra (a
bundle adds ``fedfr.threshold``; a generic model carries its checkpoint's
``fedfr.thresholds``, JSON ``{"far": {"1e-03": t, ...}, "source", "pairs", ...}``: thresholds
calibrated where it was trained or validated — not the personalized model's).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedfr.data.contract import ARCFACE_CONTRACT, InputContract

log = logging.getLogger("export")

ONNX_FORMAT = "fedfr-onnx/1"
INPUT_NAME = "data"
OUTPUT_NAME = "embedding"
#: What the exported graph takes: the stored crop size, whatever the backbone runs at.
CROP_SIZE = ARCFACE_CONTRACT.size
DEFAULT_OPSET = 18


def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) weights of :func:`torch.nn.functional.interpolate`'s antialiased bilinear
    resize along one axis (the resize is separable: ``out = A_h @ x @ A_w.T``)."""
    # Resizing the identity image along its rows gives the matrix itself. (Not a 1-pixel-wide
    # column: torch's antialiased kernel treats width 1 differently.)
    eye = torch.eye(n_in, dtype=torch.float64)[None, None]
    a = F.interpolate(eye, size=(n_out, n_in), mode="bilinear", antialias=True,
                      align_corners=False)
    return a[0, 0].float().contiguous()


class RecognizerGraph(nn.Module):
    """(N, 3, 112, 112) normalized → [resize] → backbone → [converter] → L2-normalized."""

    def __init__(self, backbone: nn.Module, backbone_size: tuple[int, int],
                 converter: np.ndarray | torch.Tensor | None = None, *,
                 converter_bias: np.ndarray | torch.Tensor | None = None,
                 uint8_input: bool = False, contract: InputContract = ARCFACE_CONTRACT) -> None:
        super().__init__()
        self.backbone = backbone
        self.uint8_input = uint8_input
        self.mean, self.std = graph_input_normalization(contract)
        # another crop geometry (dlib_r34) or per-channel normalization: back to pixels, the
        # training path's reframe (fedfr.train.embedding.to_model_frame), the model's own
        # normalization; otherwise the resize acts on normalized values (it is linear)
        self.reframe = (contract.alignment != "arcface" or isinstance(contract.mean, tuple)
                        or isinstance(contract.std, tuple))
        self.resize = tuple(backbone_size) != CROP_SIZE and not self.reframe
        if self.reframe:
            from fedfr.train.embedding import reframe_tensors

            if contract.alignment != "arcface":
                a_h, a_w = reframe_tensors(CROP_SIZE[0], contract.alignment, backbone_size[0])
            else:
                a_h = resize_matrix(CROP_SIZE[0], backbone_size[0])
                a_w = resize_matrix(CROP_SIZE[1], backbone_size[1])
            self.register_buffer("a_h", a_h.clone())
            self.register_buffer("a_wt", a_w.T.contiguous())
            self.register_buffer("model_mean", torch.as_tensor(
                contract.channel_mean()).view(1, 3, 1, 1))
            self.register_buffer("model_std", torch.as_tensor(
                contract.channel_std()).view(1, 3, 1, 1))
        if self.resize:
            self.register_buffer("a_h", resize_matrix(CROP_SIZE[0], backbone_size[0]))
            self.register_buffer("a_wt", resize_matrix(CROP_SIZE[1], backbone_size[1]).T
                                 .contiguous())
        if converter is not None:
            c = torch.as_tensor(np.asarray(converter, np.float32))
            if c.ndim != 2 or c.shape[0] != c.shape[1]:
                raise ValueError(f"converter must be (D, D), got {tuple(c.shape)}")
            self.register_buffer("converter_t", c.T.contiguous())  # f @ W.T == Linear(W)
        else:
            self.converter_t = None
        b = None
        if converter is not None and converter_bias is not None:
            b = torch.as_tensor(np.asarray(converter_bias, np.float32))
            if b.shape != (c.shape[0],):
                raise ValueError(f"converter bias must be ({c.shape[0]},), got {tuple(b.shape)}")
        self.register_buffer("converter_b", b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uint8_input:
            x = (x.permute(0, 3, 1, 2).float() - self.mean) / self.std
        if self.reframe:
            x = torch.matmul(torch.matmul(self.a_h, x * self.std + self.mean), self.a_wt)
            x = (x - self.model_mean) / self.model_std
        if self.resize:
            x = torch.matmul(torch.matmul(self.a_h, x), self.a_wt)
        f = self.backbone(x).float()
        if self.converter_t is not None:
            f = torch.matmul(f, self.converter_t)
            if self.converter_b is not None:
                f = f + self.converter_b
        # f / ||f|| by broadcasting (F.normalize exports an Expand OpenCV's DNN rejects)
        return f * torch.rsqrt(torch.clamp((f * f).sum(dim=1, keepdim=True), min=1e-24))


def graph_input_normalization(contract: InputContract) -> tuple[float, float]:
    """The ``(mean, std)`` the exported graph's input is normalized with: the backbone's own
    when it is one number each, else ArcFace's 127.5 / 127.5 (the graph renormalizes per
    channel inside)."""
    if isinstance(contract.mean, tuple) or isinstance(contract.std, tuple):
        return float(ARCFACE_CONTRACT.mean), float(ARCFACE_CONTRACT.std)
    return float(contract.mean), float(contract.std)


def export_onnx(graph: RecognizerGraph, out: str | os.PathLike[str], *, arch: str,
                embedding_size: int, backbone_contract: InputContract,
                model_version: str = "", personalized: bool = False,
                metadata: dict[str, str] | None = None, opset: int = DEFAULT_OPSET) -> Path:
    """Export ``graph`` to ``out`` (atomically) with the fedfr metadata; returns the path.

    Raises:
        ValueError: an opset below 17.
    """
    import onnx

    from fedfr.io import atomic_path

    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    graph = graph.eval().cpu()
    if graph.uint8_input:
        example = torch.zeros(2, *CROP_SIZE, 3, dtype=torch.uint8)
    else:
        example = torch.zeros(2, 3, *CROP_SIZE)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("N", min=1, max=4096)
    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            opset_version=opset, dynamo=True, dynamic_shapes=({0: batch},),
            external_data=False, verbose=False)
    model = program.model_proto
    in_mean, in_std = graph_input_normalization(backbone_contract)
    input_contract = replace(ARCFACE_CONTRACT, mean=in_mean, std=in_std,
                             dtype="uint8" if graph.uint8_input else "float32",
                             layout="NHWC" if graph.uint8_input else "NCHW")
    meta = {
        "fedfr.format": ONNX_FORMAT,
        "fedfr.arch": arch,
        "fedfr.embedding_size": str(int(embedding_size)),
        "fedfr.input_contract": json.dumps(input_contract.to_dict()),
        "fedfr.backbone_contract": json.dumps(backbone_contract.to_dict()),
        "fedfr.model_version": str(model_version),
        "fedfr.personalized": "true" if personalized else "false",
        "fedfr.input_dtype": "uint8" if graph.uint8_input else "float32",
        "fedfr.output": "L2-normalized embedding",
        **(metadata or {}),
    }
    del model.metadata_props[:]
    for k, v in meta.items():
        p = model.metadata_props.add()
        p.key, p.value = k, str(v)
    model.producer_name = "fedfr-export"
    onnx.checker.check_model(model)
    with atomic_path(out) as tmp:
        onnx.save_model(model, str(tmp))
    return out


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress lines to stdout; keep CLI output (and --json) clean."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (raises ``DataFormatError`` if unreadable)."""
    import onnx

    from fedfr.errors import DataFormatError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise DataFormatError(f"{path}: not a readable ONNX model: {e}") from None
    return {p.key: p.value for p in model.metadata_props}


def export_checkpoint(weights: str | os.PathLike[str], out: str | os.PathLike[str], *,
                      arch: str, uint8_input: bool = False, opset: int = DEFAULT_OPSET,
                      model_version: str = "") -> Path:
    """A generic model (backbone alone) from any checkpoint
    :func:`fedfr.checkpoint.load_backbone` reads (arcface_torch ``.pth`` included)."""
    from fedfr.backbones import get_backbone_spec
    from fedfr.checkpoint import load_backbone, read_checkpoint

    net = load_backbone(weights, arch).eval()
    extra = None
    try:
        ck = read_checkpoint(weights)
        contract, emb = ck.contract, ck.embedding_size
        model_version = model_version or str(ck.metadata.get("model_version", ""))
        extra = _thresholds_metadata(ck.metadata)
    except Exception:  # an arcface_torch .pth: the arch's registered contract
        contract = get_backbone_spec(arch).contract
        emb = _embedding_size(net, contract)
    graph = RecognizerGraph(net, contract.size, uint8_input=uint8_input, contract=contract)
    return export_onnx(graph, out, arch=arch, embedding_size=emb, backbone_contract=contract,
                       model_version=model_version, opset=opset, metadata=extra)


def _thresholds_metadata(metadata: dict) -> dict[str, str]:
    """A generic model's ``fedfr.thresholds`` (calibrated where it was trained or validated,
    :func:`fedfr.evaluation.model_thresholds`) as ONNX metadata (JSON); ``{}`` without."""
    t = (metadata or {}).get("fedfr.thresholds")
    return {"fedfr.thresholds": json.dumps(t, sort_keys=True)} if t else {}


def _embedding_size(net: nn.Module, contract: InputContract) -> int:
    with torch.no_grad():
        return int(net.eval()(torch.zeros(1, 3, *contract.size)).shape[1])


def export_personalized(model, private, out: str | os.PathLike[str], *,
                        uint8_input: bool = False, opset: int = DEFAULT_OPSET,
                        metadata: dict[str, str] | None = None) -> Path:
    """A device's personalized recognizer (its local backbone → its converter).

    Args:
        model: the :class:`fedfr.fl.GlobalModel` the device trained (arch, contract, version).
        private: the device's :class:`fedfr.train.local_state.PrivateState`.
    """
    from fedfr.train.recognizer import build_model_backbone

    if private.local_backbone is None:
        raise ValueError("no personalized recognizer before the first local round")
    contract = InputContract.from_dict(model.contract)
    net = build_model_backbone(model, private.local_backbone).eval()
    graph = RecognizerGraph(net, contract.size, private.converter,
                            converter_bias=private.converter_bias, uint8_input=uint8_input,
                            contract=contract)
    return export_onnx(graph, out, arch=model.arch, embedding_size=model.embedding_size,
                       backbone_contract=contract, model_version=model.version,
                       personalized=True, metadata=metadata, opset=opset)


def export_generic(model, out: str | os.PathLike[str], *,
                   uint8_input: bool = False, opset: int = DEFAULT_OPSET,
                   metadata: dict[str, str] | None = None) -> Path:
    """The generic recognizer of a :class:`fedfr.fl.GlobalModel` (its backbone alone)."""
    from fedfr.train.recognizer import build_model_backbone

    contract = InputContract.from_dict(model.contract)
    net = build_model_backbone(model).eval()
    graph = RecognizerGraph(net, contract.size, uint8_input=uint8_input, contract=contract)
    return export_onnx(graph, out, arch=model.arch, embedding_size=model.embedding_size,
                       backbone_contract=contract, model_version=model.version,
                       metadata={**_thresholds_metadata(model.metadata), **(metadata or {})},
                       opset=opset)
