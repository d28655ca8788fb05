"""export: the recognizer in ONNX, int8 quantization, and verification bundles.

- :mod:`export.onnx_export` — generic (backbone) or personalized (backbone → converter) ONNX
  with fedfr metadata; :func:`~export.onnx_export.export_checkpoint` for any checkpoint
  ``fedfr.checkpoint.load_backbone`` reads;
- :mod:`export.quantize` — static QDQ and dynamic int8 (ONNX Runtime's tools);
- :mod:`export.bundle` — templates, threshold calibration, the bundle format, :class:`Bundle`;
- :mod:`export.preprocess` — image → model input, as the web demo does it;
- ``python -m export`` — the command line (:mod:`export.cli`).
"""
