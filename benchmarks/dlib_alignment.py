"""dlib_r34 on the real photos: parity with dlib, and what our alignment costs.

For every face dlib's own pipeline finds in the real photos (HOG detector, 5-point shape
predictor, ``get_face_chip(size=150, padding=0.25)``, ``compute_face_descriptor``):

* **parity**: our torch network on dlib's chip vs dlib's descriptor (max abs difference);
* **direct**: MTCNN's five points aligned straight onto ``DLIB_TEMPLATE_150`` (a 150x150 dlib
  chip made by our detector), cosine to dlib's descriptor;
* **reframed**: the product's path — MTCNN → the 112x112 ArcFace crop → reframed into dlib's
  chip (``fedfr.train.embedding.preprocess``) — cosine to dlib's descriptor.

::

    python benchmarks/dlib_alignment.py [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import dlib
    import torch

    from device_sdk.faces import MTCNNDetector
    from fedfr.backbones.dlib_weights import dlib_r34_backbone, dlib_weights_path
    from fedfr.data import realphotos
    from fedfr.data.align import align_face, template_for
    from fedfr.data.contract import DLIB_CONTRACT
    from fedfr.train.embedding import preprocess

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    w = dlib_weights_path()
    net = dlib_r34_backbone(w)
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(w.parent / "shape_predictor_5_face_landmarks.dat"))
    ref_model = dlib.face_recognition_model_v1(str(w))
    mt = MTCNNDetector()

    def ours(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return net(x).numpy()[0]

    def cos(a, b) -> float:
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    rows = []
    for name in ("obama", "obama2", "obama3", "biden", "tom_hanks", "astronaut", "t1"):
        img = np.ascontiguousarray(realphotos.real_photo_rgb(name))
        faces = mt.detect(img)
        for d in det(img, 1):
            chip = dlib.get_face_chip(img, sp(img, d), size=150, padding=0.25)
            ref = np.array(ref_model.compute_face_descriptor(chip), np.float32)
            mine = ours(torch.from_numpy(DLIB_CONTRACT.normalize(chip)))
            # the MTCNN face whose nose is inside dlib's box
            match = [f for f in faces if d.left() < f.landmarks[2, 0] < d.right()
                     and d.top() < f.landmarks[2, 1] < d.bottom()]
            row = {"photo": name, "parity_max_abs": float(np.abs(mine - ref).max())}
            if match:
                lm = match[0].landmarks
                direct = align_face(img, lm, size=150, template=template_for("dlib", 150))
                crop = align_face(img, lm)
                row["direct_cos"] = cos(ours(torch.from_numpy(DLIB_CONTRACT.normalize(direct))),
                                        ref)
                row["reframed_cos"] = cos(ours(preprocess(torch.from_numpy(crop[None]),
                                                          DLIB_CONTRACT)), ref)
            rows.append(row)
    d = [r["direct_cos"] for r in rows if "direct_cos" in r]
    f = [r["reframed_cos"] for r in rows if "reframed_cos" in r]
    summary = {"faces": len(rows), "matched": len(d),
               "parity_max_abs": max(r["parity_max_abs"] for r in rows),
               "direct_cos": {"median": float(np.median(d)), "min": float(np.min(d))},
               "reframed_cos": {"median": float(np.median(f)), "min": float(np.min(f))}}
    if args.json:
        print(json.dumps({"summary": summary, "faces": rows}, indent=2))
        return 0
    print(f"{summary['faces']} faces found by dlib ({summary['matched']} also by MTCNN)")
    print(f"parity, our network vs dlib on dlib's chips: max |diff| "
          f"{summary['parity_max_abs']:.2e}")
    for k, label in (("direct_cos", "MTCNN -> dlib template (150 chip)"),
                     ("reframed_cos", "MTCNN -> ArcFace 112 crop -> reframed (the product)")):
        print(f"{label:<52} cosine to dlib's descriptor: median {summary[k]['median']:.4f}, "
              f"min {summary[k]['min']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
