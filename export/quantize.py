"""int8 quantization with ONNX Runtime's tools.

- :func:`quantize_static_int8` — static QDQ: weights int8 per channel, activations uint8 with
  ranges calibrated on the device's own images (MinMax). By default (``keep_float``) the
  normalization tail after the last Gemm/MatMul stays float — quantizing it made the output
  norms 0.87–1.02, breaking the "L2-normalized embedding" contract the bundle's scores rely on —
  and so do grouped, non-depthwise convolutions (mbf has one; ONNX Runtime's int8 kernel for it
  was ~8x slower than float on an x86 CPU without VNNI); ``reduce_range`` (7-bit weights) avoids
  the u8s8 saturation of those CPUs. ``benchmarks/export_latency.py`` measures both settings.
- :func:`quantize_dynamic_int8` — dynamic: int8 weights, activation ranges computed at run time;
  no calibration data (every Conv becomes ``ConvInteger``; far slower on these CPUs).

The fedfr metadata of the float model is carried over to the quantized one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from export.onnx_export import INPUT_NAME


class _Reader:
    """ONNX Runtime's CalibrationDataReader over an array of model inputs."""

    def __init__(self, inputs: np.ndarray, batch: int = 16) -> None:
        self._batches = [inputs[i:i + batch] for i in range(0, len(inputs), batch)]
        self._it = iter(self._batches)

    def get_next(self) -> dict | None:
        b = next(self._it, None)
        return None if b is None else {INPUT_NAME: b}

    def rewind(self) -> None:
        self._it = iter(self._batches)


def _copy_metadata(src: Path, dst: Path, extra: dict[str, str]) -> None:
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    meta.update(extra)
    model = onnx.load(str(dst))
    del model.metadata_props[:]
    for k, v in meta.items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    onnx.save_model(model, str(dst))


def _keep_float_nodes(model_path: Path) -> list[str]:
    """The nodes after the last Gemm/MatMul (the L2 normalization) and grouped convolutions
    that are not depthwise."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model_path)).graph
    weights = {i.name: i for i in graph.initializer}
    nodes = list(graph.node)
    fc = [i for i, n in enumerate(nodes) if n.op_type in ("Gemm", "MatMul")]
    keep = [n.name for n in nodes[max(fc) + 1:]] if fc else []
    for n in nodes:
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        w = weights.get(n.input[1]) if n.op_type == "Conv" and len(n.input) > 1 else None
        if w is not None and group > 1 and numpy_helper.to_array(w).shape[1] > 1:
            keep.append(n.name)
    return keep


def quantize_static_int8(fp32: str | os.PathLike[str], out: str | os.PathLike[str],
                         calibration: np.ndarray, *, per_channel: bool = True,
                         reduce_range: bool = True, keep_float: bool = True) -> Path:
    """Static QDQ int8 of ``fp32``, calibrated on ``calibration`` (float32 model inputs,
    (N, 3, 112, 112), normalized — the device's own images). ``keep_float`` and
    ``reduce_range``: see the module doc.

    Raises:
        ValueError: no calibration input, or inputs of the wrong shape or dtype.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration = np.asarray(calibration)
    if calibration.dtype != np.float32 or calibration.ndim != 4 or len(calibration) == 0:
        raise ValueError(f"calibration must be float32 (N, 3, H, W) model inputs with N >= 1, "
                         f"got {calibration.dtype} {calibration.shape}")
    fp32, out = Path(fp32), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        staged = Path(tmp) / "int8.onnx"
        exclude = _keep_float_nodes(pre) if keep_float else []
        quantize_static(str(pre), str(staged), _Reader(calibration),
                        quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        reduce_range=reduce_range, nodes_to_exclude=exclude)
        _copy_metadata(fp32, staged, {"fedfr.quantization": "int8 static QDQ (MinMax, "
                                      f"{len(calibration)} calibration images, "
                                      f"per_channel={per_channel}, "
                                      f"reduce_range={reduce_range}, "
                                      f"{len(exclude)} nodes kept float)"})
        os.replace(staged, out)
    return out


def quantize_dynamic_int8(fp32: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Dynamic int8 of ``fp32`` (weights int8; activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32, out = Path(fp32), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "int8.onnx"
        quantize_dynamic(str(fp32), str(staged), weight_type=QuantType.QInt8)
        _copy_metadata(fp32, staged, {"fedfr.quantization": "int8 dynamic"})
        os.replace(staged, out)
    return out
