"""A content-addressed blob store: model versions, public packs and uploads, named by sha256.

:class:`BlobStore` is the interface (an object store such as S3 can implement it later);
:class:`FileBlobStore` keeps blobs on the filesystem at ``ROOT/ab/cd/<sha256>``. A blob is
written to a temporary file in ``ROOT/tmp``, hashed while it is written, fsynced and renamed
into place, so a reader — or a server restarted after SIGKILL — sees a complete blob or none.
Because the name is the hash of the content, writing the same content twice is a no-op and a
blob can never change under a name.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from fedfr.io import sha256_file

CHUNK = 1 << 20
_SHA = re.compile(r"^[0-9a-f]{64}$")


class BlobTooLarge(Exception):
    """A streamed blob exceeded its size limit (nothing was stored)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than the limit of {limit} bytes")
        self.limit = limit


class BlobStore(Protocol):
    """What the aggregator needs from blob storage."""

    def put_file(self, path: Path, sha256: str | None = None) -> tuple[str, int]:
        """Store a local file's content (the file is consumed; ``sha256`` when the caller
        already hashed it); ``(sha256, size)``."""

    def staging(self) -> Path:
        """A fresh temporary path on the store's filesystem for :meth:`put_file`."""

    def path(self, sha256: str) -> Path:
        """A local path to read the blob from (raises ``FileNotFoundError``)."""

    def exists(self, sha256: str) -> bool: ...

    def size(self, sha256: str) -> int: ...

    def iter_range(self, sha256: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start..end`` (inclusive), in chunks (ranged downloads)."""

    def delete(self, sha256: str) -> None: ...

    def list(self) -> Iterator[tuple[str, float]]:
        """``(sha256, modification time)`` of every blob (garbage collection)."""


def check_sha(sha256: str) -> str:
    if not _SHA.match(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256[:80]!r}")
    return sha256


class FileBlobStore:
    """Blobs as files under ``root`` (see the module doc)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def _final(self, sha256: str) -> Path:
        check_sha(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def staging(self) -> Path:
        fd, name = tempfile.mkstemp(dir=self._tmp, suffix=".part")
        os.close(fd)
        return Path(name)

    def put_file(self, path: Path, sha256: str | None = None) -> tuple[str, int]:
        """Move ``path`` (on this store's filesystem: see :meth:`staging`) into the store."""
        path = Path(path)
        sha = sha256 or sha256_file(path)
        size = path.stat().st_size
        final = self._final(sha)
        if final.exists():
            if path.resolve() != final.resolve():
                path.unlink(missing_ok=True)
            os.utime(final)  # fresh again: garbage collection goes by age
            return sha, size
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(path, 0o644)
        os.replace(path, final)
        _fsync_dir(final.parent)
        return sha, size

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        tmp = self.staging()
        try:
            tmp.write_bytes(data)
            return self.put_file(tmp, hashlib.sha256(data).hexdigest())
        finally:
            tmp.unlink(missing_ok=True)

    def path(self, sha256: str) -> Path:
        p = self._final(sha256)
        if not p.exists():
            raise FileNotFoundError(f"blob {sha256} is not in the store")
        return p

    def exists(self, sha256: str) -> bool:
        return self._final(sha256).exists()

    def size(self, sha256: str) -> int:
        return self.path(sha256).stat().st_size

    def delete(self, sha256: str) -> None:
        self._final(sha256).unlink(missing_ok=True)

    def list(self) -> Iterator[tuple[str, float]]:
        """``(sha256, modification time)`` of every stored blob."""
        for p in self.root.glob("??/??/*"):
            if _SHA.match(p.name):
                try:
                    yield p.name, p.stat().st_mtime
                except FileNotFoundError:
                    continue

    def iter_range(self, sha256: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start..end`` (inclusive) of a blob, in chunks."""
        with open(self.path(sha256), "rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                yield chunk

    def clean_staging(self, older_than: float = 3600.0) -> int:
        """Remove temporary files a killed process left behind (older than ``older_than``
        seconds, so another worker's upload in progress is kept); returns how many."""
        import time

        n = 0
        now = time.time()
        for p in self._tmp.glob("*.part"):
            try:
                if now - p.stat().st_mtime > older_than:
                    p.unlink(missing_ok=True)
                    n += 1
            except FileNotFoundError:
                pass
        return n


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
