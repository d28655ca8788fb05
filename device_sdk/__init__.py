"""The FedFR device SDK: what a phone-side or edge-box process runs (library API + CLI).

State lives in a *device home* (``--home DIR``, ``FEDFR_DEVICE_HOME``, default
``~/.fedfr-device``): a small SQLite database and files (:mod:`device_sdk.home`).

- :mod:`device_sdk.api` — the library functions behind the CLI (``register``, ``enroll``,
  ``identities``, ``forget``);
- :mod:`device_sdk.faces` — face detection and 5-point alignment of ordinary photos;
- :mod:`device_sdk.client` — the HTTP client to the aggregator (REST contract v1);
- :mod:`device_sdk.cli` — ``device_sdk`` / ``python -m device_sdk``.

Privacy: no image, identity name, local class weight or converter parameter ever leaves the
device; the client sends only what :data:`device_sdk.client.ALLOWED_INFO_KEYS` allows.
``device_sdk`` never imports ``aggregator``: the contract between them is HTTP.
"""

from fedfr import __version__

__all__ = ["__version__"]
