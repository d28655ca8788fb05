"""Real faces from packages, through the device's own detection and alignment, as a check.

The photos (:mod:`fedfr.data.realphotos`: scikit-image's data, the ``insightface`` and
``face_recognition`` sdists' sample images, cached by set-up) hold 14 faces of 10 people:
Barack Obama five times (``obama``, ``obama2``, ``obama3`` and two photos of his face cut by the
image's edge), Joe Biden, Tom Hanks, Eileen Collins (``astronaut``) and the six people of
``t1.jpg``. That is **10 genuine pairs** and 81 impostor pairs — far too few for a TAR at a
low FAR; what they can show is whether a model separates these people at all (every genuine
score above every impostor score?) and whether fine-tuning moves that.

Each face is found by MTCNN and aligned onto the ArcFace template (the best face of a
one-person photo; every face of ``t1``), the path ``device_sdk enroll`` takes, so a model is
judged on the crops a device would store.

::

    python -m device_sdk.realfaces MODEL.safetensors [MODEL ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["REAL_FACES", "real_face_crops", "real_pairs_report"]

#: photo -> identity; ``t1`` holds six people, one identity each (``t1_0``.. by detection order).
REAL_FACES = {"obama": "obama", "obama2": "obama", "obama3": "obama",
              "obama_partial_face": "obama", "obama_partial_face2": "obama", "biden": "biden",
              "tom_hanks": "tom_hanks", "astronaut": "eileen_collins", "t1": None}


def real_face_crops(detector=None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(crops (N, 112, 112, 3) uint8, labels (N,) int64, identity names)`` of the real photos.

    Raises:
        FileNotFoundError: the photos are not cached (the message says how to get them).
    """
    from device_sdk.faces import default_detector
    from fedfr.data import realphotos
    from fedfr.data.align import align_face

    missing = [n for n in REAL_FACES if n in realphotos.missing()]
    if missing:
        raise FileNotFoundError(f"real photos not cached: {missing}; {realphotos.SETUP_HINT}")
    det = detector or default_detector()
    crops, names = [], []
    for photo, who in REAL_FACES.items():
        img = realphotos.real_photo_rgb(photo)
        faces = det.detect(img)
        if who is not None:
            faces = faces[:1]  # the best face: these photos hold one person
        for k, f in enumerate(sorted(faces, key=lambda f: f.box[0]) if who is None else faces):
            crops.append(align_face(img, f.landmarks))
            names.append(who or f"{photo}_{k}")
    ident = sorted(set(names), key=names.index)
    labels = np.array([ident.index(n) for n in names], np.int64)
    return np.stack(crops), labels, ident


def real_pairs_report(embed: Callable[[np.ndarray], np.ndarray], crops: np.ndarray,
                      labels: np.ndarray, threshold: float | None = None) -> dict:
    """Every pair's cosine score: the genuine and impostor scores, whether they separate, the
    AUC, and with ``threshold`` the accept/reject decisions."""
    e = np.asarray(embed(crops), np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    i, j = np.triu_indices(len(e), 1)
    s = (e[i] * e[j]).sum(1)
    same = labels[i] == labels[j]
    gen, imp = s[same], s[~same]
    auc = float((gen[:, None] > imp[None, :]).mean() + 0.5 * (gen[:, None] == imp[None, :])
                .mean())
    out = {"genuine_pairs": int(same.sum()), "impostor_pairs": int((~same).sum()),
           "genuine": [round(float(x), 4) for x in gen],
           "genuine_min": float(gen.min()), "impostor_max": float(imp.max()),
           "impostor_mean": float(imp.mean()), "separated": bool(gen.min() > imp.max()),
           "margin": float(gen.min() - imp.max()), "auc": auc}
    if threshold is not None:
        out["threshold"] = float(threshold)
        out["genuine_accepted"] = int((gen >= threshold).sum())
        out["impostor_accepted"] = int((imp >= threshold).sum())
    return out


def main(argv: list[str] | None = None) -> int:
    from fedfr.fl import GlobalModel
    from fedfr.train.recognizer import generic_embedder

    p = argparse.ArgumentParser(prog="python -m device_sdk.realfaces",
                                description="generic models on the real photos' pairs")
    p.add_argument("models", nargs="+", type=Path, help="fedfr checkpoints (.safetensors)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    crops, labels, names = real_face_crops()
    rows = {}
    for m in args.models:
        rows[str(m)] = real_pairs_report(generic_embedder(GlobalModel.load(m)), crops, labels)
    if args.json:
        print(json.dumps({"faces": len(labels), "identities": names, "models": rows}, indent=2))
        return 0
    first = next(iter(rows.values()))
    print(f"{len(labels)} faces of {len(names)} people; {first['genuine_pairs']} genuine and "
          f"{first['impostor_pairs']} impostor pairs")
    print(f"{'model':<48} {'genuine min':>11} {'impostor max':>12} {'margin':>7} {'AUC':>6}")
    for k, r in rows.items():
        print(f"{k[-48:]:<48} {r['genuine_min']:11.4f} {r['impostor_max']:12.4f} "
              f"{r['margin']:7.4f} {r['auc']:6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
