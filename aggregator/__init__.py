"""The FedFR aggregator: the cloud service that runs rounds, keeps model versions and devices
in SQL and blobs on disk, and averages the devices' shared tensors with :mod:`fedfr.fl`.

- :mod:`aggregator.app` — the FastAPI app (``create_app(settings)``), REST contract v1;
- :mod:`aggregator.service` — rounds, devices, uploads and aggregation (HTTP-free);
- :mod:`aggregator.db` — tables (SQLAlchemy 2) and migrations (Alembic);
- :mod:`aggregator.blobs` — the content-addressed blob store;
- :mod:`aggregator.cli` — ``aggregator serve`` and ``aggregator admin``.

Numpy + safetensors only: the service never imports torch.
"""

__version__ = "0.1.0"
