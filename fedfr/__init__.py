"""FedFR core library: backbones, margins, data, synthetic faces, metrics, training.

Dependency direction: ``fedfr`` imports none of ``aggregator``, ``device_sdk`` or ``export``.
``fedfr.metrics`` and ``fedfr.data`` (except the torch-facing helpers) need numpy only.
"""

__version__ = "0.1.0"
