"""int8 quantization with ONNX Runtime's tools.

- :func:`quantize_static_int8` — static QDQ: weights int8 per channel, activations uint8 with
  ranges calibrated on the device's own images (MinMax); what runs fastest on a phone CPU.
- :func:`quantize_dynamic_int8` — dynamic: int8 weights, activation ranges computed at run time;
  no calibration data, but ONNX Runtime only quantizes MatMul/Gemm that way, so a convolutional
  backbone stays mostly float (``benchmarks/export_latency.py`` measures both).

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


def quantize_static_int8(fp32: str | os.PathLike[str], out: str | os.PathLike[str],
                         calibration: np.ndarray, *, per_channel: bool = True) -> Path:
    """Static QDQ int8 of ``fp32``, calibrated on ``calibration`` (float32 model inputs,
    (N, 3, 112, 112), normalized — the device's own images).

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
        quantize_static(str(pre), str(staged), _Reader(calibration),
                        quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        _copy_metadata(fp32, staged, {"fedfr.quantization": "int8 static QDQ (MinMax, "
                                      f"{len(calibration)} calibration images, "
                                      f"per_channel={per_channel})"})
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
