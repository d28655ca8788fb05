"""Atomic file writes: a reader sees the old file or the complete new one, never a half.

Every file the library writes goes through :func:`atomic_path`: the content is written to a
temporary file in the same directory, flushed to disk, given the permissions a plain ``open``
would give (``0o666`` minus the umask — ``mkstemp``'s private ``0o600`` would leave checkpoints
and reports unreadable to other users), then renamed over the target with ``os.replace``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``.

    The caller writes (and closes) the temporary file inside the ``with`` block. On a clean
    exit it is fsynced, chmod-ed per the umask and renamed onto ``path``; on an exception it is
    removed and ``path`` keeps its previous content (if any).
    """
    target = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_dir(staged: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move a completely written directory ``staged`` onto ``target`` (same filesystem).

    An existing ``target`` is renamed away first and removed after, so ``target`` is always
    the old directory or the new one, never a mix of both.
    """
    import shutil

    staged, target = Path(staged), Path(target)
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staged, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, target)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of a file's bytes, read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def jsonable(o: object) -> object:
    """``json.dumps(default=...)`` hook for numpy scalars/arrays, tuples and paths."""
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray | tuple):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def write_json_atomic(path: str | os.PathLike[str], obj: object) -> None:
    """Write ``obj`` as indented JSON, atomically, creating the parent directory."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, (json.dumps(obj, indent=2, default=jsonable) + "\n").encode())
