"""A few real photos for tests and demos, taken from registry packages (never committed).

Real faces cannot be downloaded from face datasets here, but a few photos ship inside packages:

==============  ==========================================================================
name            source
==============  ==========================================================================
``astronaut``   scikit-image ``skimage.data.astronaut()`` (Eileen Collins, 512x512, one face)
``chelsea``     scikit-image ``skimage.data.chelsea()`` (a cat: no human face)
``t1``          ``insightface`` 0.7.3 sdist ``insightface/data/images/t1.jpg`` (6 people)
``tom_hanks``   ``insightface`` 0.7.3 sdist ``insightface/data/images/Tom_Hanks_54745.png``
``obama``       ``face_recognition`` 1.3.0 sdist ``tests/test_images/obama.jpg``
``obama2``      … ``obama2.jpg``
``obama3``      … ``obama3.jpg``
``biden``       … ``biden.jpg``
``obama_partial_face``   … ``obama_partial_face.jpg`` (cut at the image's edge)
``obama_partial_face2``  … ``obama_partial_face2.jpg``
==============  ==========================================================================

``bash scripts/setup.sh`` fills the cache (``python -m fedfr.data.realphotos fetch``): it runs
``pip download --no-deps --no-binary insightface,face_recognition insightface==0.7.3
face_recognition==1.3.0`` into ``.cache/real_photos/sdists/`` and extracts just those images;
the scikit-image ones are written as PNG. Idempotent: nothing is downloaded when every file is
there. The cache is ``.cache/real_photos/`` at the repository root (git-ignored), or
``$FEDFR_REAL_PHOTOS``.

API: :func:`real_photo` (the file's path) and :func:`real_photo_rgb` (uint8 RGB array);
:func:`missing` lists the names not in the cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

__all__ = ["NAMES", "cache_dir", "fetch", "missing", "real_photo", "real_photo_rgb"]

_SDISTS = {"insightface": "0.7.3", "face_recognition": "1.3.0"}
#: name -> (file name in the cache, where it comes from)
_FILES = {
    "astronaut": ("astronaut.png", ("skimage", "astronaut")),
    "chelsea": ("chelsea.png", ("skimage", "chelsea")),
    "t1": ("t1.jpg", ("insightface", "insightface-0.7.3/insightface/data/images/t1.jpg")),
    "tom_hanks": ("Tom_Hanks_54745.png",
                  ("insightface", "insightface-0.7.3/insightface/data/images/Tom_Hanks_54745.png")),
    **{n: (f"{n}.jpg", ("face_recognition", f"face_recognition-1.3.0/tests/test_images/{n}.jpg"))
       for n in ("obama", "obama2", "obama3", "biden", "obama_partial_face",
                 "obama_partial_face2")},
}
NAMES = tuple(_FILES)
SETUP_HINT = "run `bash scripts/setup.sh` (or `python -m fedfr.data.realphotos fetch`)"


def cache_dir() -> Path:
    """``$FEDFR_REAL_PHOTOS``, else ``<repository>/.cache/real_photos``."""
    env = os.environ.get("FEDFR_REAL_PHOTOS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".cache" / "real_photos"


def missing() -> list[str]:
    """The names whose file is not in the cache."""
    d = cache_dir()
    return [n for n, (f, _) in _FILES.items() if not (d / f).is_file()]


def real_photo(name: str) -> Path:
    """The cached file of photo ``name`` (see the module doc for the names).

    Raises:
        KeyError: an unknown name.
        FileNotFoundError: the cache lacks it (the message says how to fill it).
    """
    if name not in _FILES:
        raise KeyError(f"unknown real photo {name!r}; known: {', '.join(NAMES)}")
    p = cache_dir() / _FILES[name][0]
    if not p.is_file():
        raise FileNotFoundError(f"real photo {name!r} is not cached at {p}: {SETUP_HINT}")
    return p


def real_photo_rgb(name: str) -> np.ndarray:
    """Photo ``name`` as uint8 ``(H, W, 3)`` RGB (alpha dropped, no colour management)."""
    from PIL import Image

    with Image.open(real_photo(name)) as im:
        return np.asarray(im.convert("RGB")).copy()


def fetch(*, quiet: bool = False) -> list[str]:
    """Fill the cache (idempotent); returns the names it wrote."""
    d = cache_dir()
    todo = missing()
    if not todo:
        return []
    d.mkdir(parents=True, exist_ok=True)
    wrote = []
    if any(_FILES[n][1][0] == "skimage" for n in todo):
        from PIL import Image
        from skimage import data

        for n in todo:
            src = _FILES[n][1]
            if src[0] == "skimage":
                Image.fromarray(np.asarray(getattr(data, src[1])())).save(d / _FILES[n][0])
                wrote.append(n)
    sd = d / "sdists"
    need = sorted({_FILES[n][1][0] for n in todo} - {"skimage"})
    for pkg in need:
        tgz = sd / f"{pkg}-{_SDISTS[pkg]}.tar.gz"
        if not tgz.is_file():
            cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
                   "-q", "--no-deps", "--no-binary", pkg, f"{pkg}=={_SDISTS[pkg]}", "-d",
                   str(sd)]
            if not quiet:
                print("[realphotos]", " ".join(cmd[2:]), flush=True)
            subprocess.run(cmd, check=True)
        with tarfile.open(tgz) as tar:
            for n in todo:
                fname, (src_pkg, member) = _FILES[n]
                if src_pkg != pkg:
                    continue
                f = tar.extractfile(member)
                if f is None:
                    raise FileNotFoundError(f"{tgz} has no {member}")
                tmp = d / (fname + ".part")
                tmp.write_bytes(f.read())
                tmp.replace(d / fname)
                wrote.append(n)
    return wrote


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["fetch"]:
        print("usage: python -m fedfr.data.realphotos fetch", file=sys.stderr)
        return 2
    wrote = fetch()
    print(f"[realphotos] {cache_dir()}: " + (f"wrote {', '.join(wrote)}" if wrote
                                             else "all cached"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
