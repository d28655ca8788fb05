"""Verification bundles: what a device runs to verify and identify its own people.

A bundle is a directory (or a ``.zip`` of one)::

    bundle.json        manifest: format, format_version, created_at, model_version, arch,
                       embedding_size, personalized, input (name, shape, dtype, layout, colour,
                       mean, std), output, threshold, far_target, calibration statistics,
                       models {"fp32": ..., "int8": ...}, files {name: {sha256, size}}
    model.onnx         fp32 recognizer (``export.onnx_export``), the threshold in its metadata
    model.int8.onnx    optional int8 (static QDQ) recognizer
    templates.json     {"embedding_size": D, "identities": [{"name", "template", "num_images"}]}

A template is the mean of the L2-normalized embeddings of a person's enrolled images,
re-normalized. The threshold is calibrated at a target FAR on the device's impostor pairs
(pairs of its held-out images of different people). Loading checks the format version, that
every listed file is there with its size and sha256, and that the model's input is what the
manifest says; anything else is a :class:`BundleError` that says what is wrong.
``android_demo/`` reads the same format.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from export.onnx_export import INPUT_NAME, OUTPUT_NAME, read_metadata
from export.preprocess import CROP, normalize, to_crop
from fedfr.errors import FedFRError
from fedfr.io import replace_dir, sha256_file

BUNDLE_FORMAT = "fedfr-bundle"
BUNDLE_FORMAT_VERSION = 1
MANIFEST = "bundle.json"
TEMPLATES = "templates.json"
FP32_MODEL = "model.onnx"
INT8_MODEL = "model.int8.onnx"
UNKNOWN = "unknown"


class BundleError(FedFRError, ValueError):
    """A bundle that is incomplete, tampered with, or of another format version."""


def l2n(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def make_templates(embeddings: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{name: (n, D) embeddings}`` → ``{name: (D,) template}`` (mean of normalized,
    re-normalized)."""
    out = {}
    for name, e in embeddings.items():
        e = np.asarray(e, np.float32)
        if e.ndim != 2 or len(e) == 0:
            raise ValueError(f"identity {name!r}: need (n >= 1, D) embeddings, got {e.shape}")
        out[name] = l2n(l2n(e).mean(axis=0))
    return out


#: Default floor of the TAR (or its estimate) at a calibrated threshold: below it the bundle
#: is refused unless forced. At 0.5 a genuine user already fails every other attempt, so a
#: bundle under it is unusable for unlock; the estimate from augmented views of the enrolled
#: photos is easier than real photos, so a threshold failing it fails real users worse.
DEFAULT_MIN_TAR = 0.5
#: Cohort images scored against each other only for the report's "excluded" diagnostic.
_MAX_DIAGNOSTIC_COHORT = 4000
GENUINE_ESTIMATE_SOURCE = ("augmented views of the enrolled images (horizontal flip, small "
                           "shifted and zoomed crops) against their own identity's template: "
                           "an estimate, not pairs of different photos")
CALIBRATION_RULE = ("the smallest threshold at which the FAR of every impostor source, taken "
                    "separately, is <= far_target (a large cohort cannot swamp the device's "
                    "own pairs; a source with fewer than 1/far_target pairs then allows no "
                    "false accept); cohort-vs-cohort pairs are not used")


class CalibrationError(BundleError):
    """The calibrated threshold fails a guard (TAR floor, enrolled self-scores); ``report``
    holds the calibration statistics."""

    def __init__(self, message: str, report: dict) -> None:
        super().__init__(message)
        self.report = report


def _impostor_source(scores: np.ndarray, far: float) -> dict:
    from fedfr.metrics import impostor_threshold

    s = np.asarray(scores, np.float64)
    return {"pairs": int(s.size), "threshold_alone": float(impostor_threshold(s, far)),
            "max_score": float(s.max()), "resolvable": bool(far * s.size >= 1.0)}


def calibrate_threshold(embeddings: np.ndarray, labels: np.ndarray, far: float, *,
                        groups: np.ndarray | None = None, cohort: np.ndarray | None = None,
                        cohort_labels: np.ndarray | None = None, cohort_name: str = "cohort",
                        genuine_estimate: np.ndarray | None = None) -> dict:
    """The cosine threshold at ``far`` on impostor pairs of the device's images, and of those
    images against a cohort of other people, with what it was computed from.

    Impostor sources: each group of ``embeddings`` (``groups``, default one group
    ``"device"``): pairs within the group with different labels; ``cohort_name``: every
    image of ``embeddings`` against every ``cohort`` row. Cohort-vs-cohort pairs are never
    used (a cohort from another domain, e.g. synthetic faces, scores its own people much
    higher or lower than the device's; measured alone in ``"excluded"``). The threshold is
    the largest of the per-source :func:`fedfr.metrics.impostor_threshold` values
    (:data:`CALIBRATION_RULE`). Genuine pairs: pairs within a group with the same label; with
    none the TAR is ``None`` (unknown), never a made-up number. ``genuine_estimate``: scores
    of augmented views of enrolled images against their template
    (:data:`GENUINE_ESTIMATE_SOURCE`), reported separately as an estimate.

    Returns:
        ``{"threshold", "far_target", "far_measured", "rule", "impostor_pairs",
        "impostor_sources": {name: {"pairs", "far_measured", "threshold_alone", "max_score",
        "resolvable"}}, "genuine_pairs", "tar", ["tar_note"], ["genuine_estimate": {"source",
        "pairs", "tar", "min_score"}], ["excluded"]}``; accept when ``score >= threshold``.

    Raises:
        ValueError: no impostor pair (one identity and no cohort), or a FAR outside (0, 1).
    """
    if not 0 < far < 1:
        raise ValueError(f"far must be in (0, 1), got {far}")
    e = l2n(embeddings)
    labels = np.asarray(labels)
    groups = np.full(len(e), "device") if groups is None else np.asarray(groups).astype(str)
    sources: dict[str, np.ndarray] = {}
    genuine = []
    if len(e) > 1:
        iu = np.triu_indices(len(e), k=1)
        scores = (e @ e.T)[iu].astype(np.float64)  # thresholds are float64: compare alike
        same_group = groups[iu[0]] == groups[iu[1]]
        same = (labels[iu[0]] == labels[iu[1]]) & same_group
        genuine.append(scores[same])
        for g in dict.fromkeys(groups.tolist()):
            sel = same_group & ~same & (groups[iu[0]] == g)
            if sel.any():
                sources[g] = scores[sel]
    if cohort is not None and len(cohort):
        c = l2n(cohort)
        sources[cohort_name] = (e @ c.T).ravel().astype(np.float64)
    if not sources:
        raise ValueError("threshold calibration needs impostor pairs: images of at least two "
                         "identities, or a cohort of other people's images")
    per = {name: _impostor_source(s, far) for name, s in sources.items()}
    t = max(p["threshold_alone"] for p in per.values())
    for name, s in sources.items():
        per[name]["far_measured"] = float(np.mean(s >= t))
    imp = np.concatenate(list(sources.values()))
    gen = np.concatenate(genuine) if genuine else np.zeros(0)
    rep: dict = {"threshold": float(t), "far_target": float(far),
                 "far_measured": float(np.mean(imp >= t)), "rule": CALIBRATION_RULE,
                 "impostor_pairs": int(imp.size), "impostor_sources": per,
                 "genuine_pairs": int(gen.size),
                 "tar": float(np.mean(gen >= t)) if gen.size else None}
    if not gen.size:
        rep["tar_note"] = ("unknown: no identity has two images among those calibrated on "
                           "(one photo per person gives no genuine pair)")
    if genuine_estimate is not None and len(genuine_estimate):
        g = np.asarray(genuine_estimate, np.float64)
        rep["genuine_estimate"] = {"source": GENUINE_ESTIMATE_SOURCE, "pairs": int(g.size),
                                   "tar": float(np.mean(g >= t)), "min_score": float(g.min())}
    if (cohort is not None and cohort_labels is not None
            and 1 < len(cohort) <= _MAX_DIAGNOSTIC_COHORT):
        cl = np.asarray(cohort_labels)
        iu = np.triu_indices(len(cohort), k=1)
        cc = (c @ c.T)[iu][cl[iu[0]] != cl[iu[1]]]
        if cc.size:
            rep["excluded"] = {f"{cohort_name} vs {cohort_name}": _impostor_source(cc, far)}
    return rep


def augmented_views(crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Six views of every uint8 (N, 112, 112, 3) crop — horizontal flip, a centre zoom and
    four corner-shifted crops (8 px), each resized back like :func:`export.preprocess.to_crop`
    — and the index of the crop each view comes from. They stand in for the re-alignment
    jitter of a new photo of the same person (:data:`GENUINE_ESTIMATE_SOURCE`)."""
    crops = np.asarray(crops)
    views, src = [], []
    m = crops.shape[1] // 14  # 8 px of 112
    n = crops.shape[1] - m
    for i, c in enumerate(crops):
        z = crops.shape[1] - m // 2
        for v in (c[:, ::-1], c[m // 2:z, m // 2:z], c[:n, :n], c[:n, m:], c[m:, :n],
                  c[m:, m:]):
            views.append(to_crop(np.ascontiguousarray(v)))
            src.append(i)
    return np.stack(views), np.asarray(src, np.int64)


def calibration_problems(cal: dict, min_tar: float) -> list[str]:
    """What is wrong with a calibration for a bundle to be usable: the TAR below
    ``min_tar``; the TAR estimate from augmented views of the enrolled images below it (an
    easier test than new photos, and the one about the enrolled people themselves: held-out
    genuine pairs may be of other people); an enrolled person whose own template rejects most
    of their enrolled images (median self-score below the threshold, ``cal["self_scores"]``;
    one outlier photo among several is reported, not refused)."""
    t = cal["threshold"]
    out = []
    if cal.get("tar") is not None and cal["tar"] < min_tar:
        out.append(f"TAR {cal['tar']:.3f} on {cal['genuine_pairs']} genuine pairs at "
                   f"threshold {t:.4f} is below the floor {min_tar:g}")
    g = cal.get("genuine_estimate")
    if g and g["tar"] < min_tar:
        known = "unknown (no genuine pair) and its" if cal.get("tar") is None else "known, but"
        out.append(f"TAR is {known} estimate from {g['pairs']} augmented views of the "
                   f"enrolled images is {g['tar']:.3f} at threshold {t:.4f} (lowest view "
                   f"score {g['min_score']:.4f}), below the floor {min_tar:g}")
    ss = cal.get("self_scores")
    if ss and ss["below_threshold"]:
        low = ", ".join(f"{n!r} {s:.4f}" for n, s in ss["below_threshold"].items())
        out.append(f"threshold {t:.4f} rejects enrolled people on their own photos: most "
                   f"of their enrolled images score below it against their own template "
                   f"(median self-score: {low})")
    return out


def format_calibration(cal: dict) -> str:
    """The calibration report as lines of text, for the command lines."""
    t = cal["threshold"]
    if cal.get("source") == "given":
        lines = [f"threshold {t:.4f} (given, not calibrated)"]
    else:
        lines = [f"threshold {t:.4f} at FAR {cal['far_target']:g} (measured "
                 f"{cal['far_measured']:.2e} on {cal['impostor_pairs']} impostor pairs)"]
        srcs = [f"{n} {s['pairs']} (max score {s['max_score']:.4f}, FAR {s['far_measured']:.2e}"
                f"{'' if s['resolvable'] else ', too few pairs to resolve the target'})"
                for n, s in cal["impostor_sources"].items()]
        lines.append("  impostor pairs by source: " + "; ".join(srcs))
        for n, s in cal.get("excluded", {}).items():
            lines.append(f"  not used: {n} {s['pairs']} pairs (alone they would give "
                         f"threshold {s['threshold_alone']:.4f})")
    if cal.get("tar") is not None:
        lines.append(f"  TAR {cal['tar']:.3f} on {cal['genuine_pairs']} genuine pairs")
    elif "genuine_pairs" in cal:
        lines.append(f"  genuine pairs: {cal['genuine_pairs']}, TAR unknown")
    if cal.get("genuine_estimate"):
        g = cal["genuine_estimate"]
        lines.append(f"  TAR estimate {g['tar']:.3f} from {g['pairs']} augmented views of the "
                     f"enrolled images (flip, shifted/zoomed crops; lowest score "
                     f"{g['min_score']:.4f}) — an estimate, not real genuine pairs")
    if cal.get("self_scores"):
        ss = cal["self_scores"]
        lines.append(f"  enrolled self-scores: lowest {ss['min']:.4f} ({ss['min_identity']!r})"
                     + (f"; {ss['images_below_threshold']} of {ss['images']} images below the "
                        f"threshold" if ss.get("images_below_threshold") else ""))
    for w in cal.get("warnings", []):
        lines.append(f"  WARNING (forced): {w}")
    return "\n".join(lines)


def _stamp_threshold(src: Path, dst: Path, threshold: float) -> None:
    import onnx

    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    props["fedfr.threshold"] = repr(float(threshold))
    del model.metadata_props[:]
    for k, v in props.items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    onnx.save_model(model, str(dst))


def write_bundle(out: str | os.PathLike[str], *, model: str | os.PathLike[str],
                 templates: Mapping[str, np.ndarray], num_images: Mapping[str, int],
                 threshold: float, far_target: float, calibration: dict | None = None,
                 int8_model: str | os.PathLike[str] | None = None,
                 make_zip: bool = False) -> Path:
    """Write a bundle directory (replacing ``out`` atomically) from exported models,
    templates and a threshold; returns the directory (or the ``.zip`` next to it)."""
    out = Path(out)
    meta = read_metadata(model)
    dim = int(meta.get("fedfr.embedding_size", 0))
    for name, t in templates.items():
        if not name or len(name) > 200 or "/" in name:
            raise ValueError(f"identity name {name!r}: 1-200 characters, no '/'")
        if np.asarray(t).shape != (dim,):
            raise ValueError(f"template of {name!r} is {np.asarray(t).shape}, the model "
                             f"embeds to ({dim},)")
    contract = json.loads(meta["fedfr.input_contract"])
    if meta.get("fedfr.input_dtype") != "float32":
        raise ValueError("a bundle's model takes float32 NCHW input (export without "
                         "uint8_input)")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _stamp_threshold(Path(model), stage / FP32_MODEL, threshold)
        models = {"fp32": FP32_MODEL}
        if int8_model is not None:
            _stamp_threshold(Path(int8_model), stage / INT8_MODEL, threshold)
            models["int8"] = INT8_MODEL
        (stage / TEMPLATES).write_text(json.dumps({
            "embedding_size": dim,
            "identities": [{"name": n, "template": [float(v) for v in np.asarray(t)],
                            "num_images": int(num_images.get(n, 0))}
                           for n, t in sorted(templates.items())]}))
        files = {p.name: {"sha256": sha256_file(p), "size": p.stat().st_size}
                 for p in sorted(stage.iterdir())}
        manifest = {
            "format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model_version": meta.get("fedfr.model_version", ""),
            "arch": meta.get("fedfr.arch", ""), "embedding_size": dim,
            "personalized": meta.get("fedfr.personalized") == "true",
            "input": {"name": INPUT_NAME, "shape": [None, 3, CROP, CROP], "dtype": "float32",
                      "layout": "NCHW", "color": contract.get("channel_order", "RGB"),
                      "mean": float(contract["mean"]), "std": float(contract["std"])},
            "output": {"name": OUTPUT_NAME, "normalized": True},
            "threshold": float(threshold), "far_target": float(far_target),
            "calibration": calibration or {},
            "models": models, "files": files,
        }
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        replace_dir(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if make_zip:
        zpath = out.with_suffix(".zip")
        with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
            for p in sorted(out.iterdir()):
                z.write(p, p.name)
        return zpath
    return out


@dataclass
class Bundle:
    """A loaded, verified bundle; runs its model with ONNX Runtime."""

    root: Path
    manifest: dict
    names: list[str]
    templates: np.ndarray  # (K, D)
    variant: str = "fp32"
    threads: int | None = None
    _session: object = field(default=None, repr=False)
    _tmp: object = field(default=None, repr=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, variant: str = "fp32",
             threads: int | None = None) -> Bundle:
        """Open a bundle directory or ``.zip`` and check it (see the module doc).

        Raises:
            BundleError: what is wrong with it.
        """
        path = Path(path)
        tmp = None
        if path.is_file() and zipfile.is_zipfile(path):
            tmp = tempfile.TemporaryDirectory(prefix="fedfr-bundle-")
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    name = Path(info.filename).name
                    if name != info.filename or name.startswith("."):
                        raise BundleError(f"{path}: unexpected entry {info.filename!r}")
                    z.extract(info, tmp.name)
            root = Path(tmp.name)
        elif path.is_dir():
            root = path
        else:
            raise BundleError(f"{path}: not a bundle directory or .zip")
        try:
            manifest = json.loads((root / MANIFEST).read_text())
        except FileNotFoundError:
            raise BundleError(f"{path}: missing {MANIFEST}") from None
        except ValueError as e:
            raise BundleError(f"{path}: {MANIFEST} is not JSON: {e}") from None
        check_manifest(manifest, root, str(path))
        if variant not in manifest["models"]:
            raise BundleError(f"{path}: no {variant!r} model in this bundle (has: "
                              f"{', '.join(manifest['models'])})")
        try:
            tj = json.loads((root / TEMPLATES).read_text())
            names = [i["name"] for i in tj["identities"]]
            mat = np.asarray([i["template"] for i in tj["identities"]], np.float32)
        except (ValueError, KeyError, TypeError) as e:
            raise BundleError(f"{path}: {TEMPLATES} is malformed: {e!r}") from None
        dim = int(manifest["embedding_size"])
        mat = mat.reshape(len(names), dim) if names else np.zeros((0, dim), np.float32)
        b = cls(root, manifest, names, mat, variant, threads)
        b._tmp = tmp
        b._check_model()
        return b

    def _check_model(self) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = self.threads
        model = self.root / self.manifest["models"][self.variant]
        try:
            sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise BundleError(f"{model}: ONNX Runtime cannot load it: {e}") from None
        inp = sess.get_inputs()[0]
        want = self.manifest["input"]
        if inp.name != want["name"] or list(inp.shape[1:]) != list(want["shape"][1:]):
            raise BundleError(f"{model}: input {inp.name} {inp.shape} does not match the "
                              f"manifest's {want['name']} {want['shape']}")
        self._session = sess

    @property
    def threshold(self) -> float:
        return float(self.manifest["threshold"])

    def embed(self, images: np.ndarray | Sequence[str | os.PathLike[str]], *,
              check_crops: bool = False) -> np.ndarray:
        """(N, D) L2-normalized embeddings of image files, or of uint8 (N, H, W, 3) RGB
        images. An image of exactly the bundle's crop size is taken as an aligned crop; any
        other is a photo: its one face is found and aligned as device_sdk does it
        (:mod:`export.faces`, the same steps as the web page). ``check_crops``: a crop-sized
        image must look like a face (device_sdk's check).

        Raises:
            DataFormatError: a file that is not an image (naming it).
            NoFaceError, MultipleFacesError: a photo with no face or several (naming it).
            ValueError: an array of the wrong dtype or shape.
        """
        from export.faces import face_crop, load_face_crop

        inp = self.manifest["input"]
        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"expected uint8 (N, H, W, 3) RGB images, got "
                                 f"{images.dtype} {images.shape}")
            crops = np.stack([face_crop(im, source=f"image #{k}", input_meta=inp,
                                        check_crops=check_crops)
                              for k, im in enumerate(images)]) if len(images) else images
        else:
            crops = np.stack([load_face_crop(p, input_meta=inp, check_crops=check_crops)
                              for p in images])
        x = normalize(crops, self.manifest["input"]["mean"], self.manifest["input"]["std"])
        return self.run(x)

    def run(self, x: np.ndarray) -> np.ndarray:
        """The model on already-normalized float32 (N, 3, 112, 112) input."""
        x = np.asarray(x)
        want = tuple(self.manifest["input"]["shape"][1:])
        if x.dtype != np.float32 or x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"model input must be float32 (N, {', '.join(map(str, want))}), "
                             f"got {x.dtype} {x.shape}")
        # re-normalized: the contract says the model does it, a quantized graph may drift
        return l2n(self._session.run([OUTPUT_NAME], {INPUT_NAME: x})[0])

    def _index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"{name!r} is not enrolled in this bundle (enrolled: "
                           f"{', '.join(self.names) or 'nobody'})") from None

    def verify(self, image: str | os.PathLike[str] | np.ndarray, name: str, *,
               check_crops: bool = False) -> dict:
        """``{"name", "score", "threshold", "accepted"}`` for one image against one person."""
        i = self._index(name)
        e = self.embed([image] if not isinstance(image, np.ndarray) else image[None],
                       check_crops=check_crops)[0]
        score = float(self.templates[i] @ e)
        return {"name": name, "score": score, "threshold": self.threshold,
                "accepted": score >= self.threshold}

    def identify(self, image: str | os.PathLike[str] | np.ndarray, *,
                 check_crops: bool = False) -> dict:
        """``{"name" (or "unknown"), "best", "score", "threshold"}``."""
        if not self.names:
            raise KeyError("nobody is enrolled in this bundle")
        e = self.embed([image] if not isinstance(image, np.ndarray) else image[None],
                       check_crops=check_crops)[0]
        scores = self.templates @ e
        k = int(np.argmax(scores))
        ok = float(scores[k]) >= self.threshold
        return {"name": self.names[k] if ok else UNKNOWN, "best": self.names[k],
                "score": float(scores[k]), "threshold": self.threshold}


def check_manifest(manifest: dict, root: Path, where: str) -> None:
    """Format, version, and every listed file's presence, size and sha256."""
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{where}: not a fedfr bundle (format="
                          f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    v = manifest.get("format_version")
    if v != BUNDLE_FORMAT_VERSION:
        raise BundleError(f"{where}: bundle format version {v!r} is not supported (this "
                          f"reader reads version {BUNDLE_FORMAT_VERSION})")
    try:
        files = dict(manifest["files"])
        models = dict(manifest["models"])
        float(manifest["threshold"])
        int(manifest["embedding_size"])
        manifest["input"]["shape"], manifest["input"]["mean"], manifest["input"]["std"]
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{where}: {MANIFEST} lacks a required field: {e!r}") from None
    for need in (TEMPLATES, *models.values()):
        if need not in files:
            raise BundleError(f"{where}: {MANIFEST} does not list {need}")
    for name, info in files.items():
        if Path(name).name != name:
            raise BundleError(f"{where}: file name {name!r} is not a plain name")
        p = root / name
        if not p.is_file():
            raise BundleError(f"{where}: missing file {name}")
        if p.stat().st_size != info.get("size") or sha256_file(p) != info.get("sha256"):
            raise BundleError(f"{where}: {name} does not match its sha256 in {MANIFEST} "
                              f"(tampered or corrupt)")


def _embedder(model: Path, mean: float, std: float):
    """One ONNX Runtime session of ``model``: uint8 crops -> raw (N, D) outputs."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])

    def embed(crops: np.ndarray) -> np.ndarray:
        out = [sess.run([OUTPUT_NAME], {INPUT_NAME: normalize(crops[i:i + 64], mean, std)})[0]
               for i in range(0, len(crops), 64)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    return embed


def create_bundle(out: str | os.PathLike[str], *, model: str | os.PathLike[str],
                  enrolled: Mapping[str, np.ndarray], heldout: np.ndarray | None = None,
                  heldout_labels: np.ndarray | None = None, far_target: float = 1e-3,
                  threshold: float | None = None, int8: bool = False,
                  calibration: np.ndarray | None = None, make_zip: bool = False,
                  cohort: np.ndarray | None = None, cohort_labels: np.ndarray | None = None,
                  cohort_name: str = "cohort", min_tar: float = DEFAULT_MIN_TAR,
                  force: bool = False) -> tuple[Path, dict]:
    """A bundle from an exported fp32 model and the device's own images.

    Args:
        out: bundle directory to write.
        model: the fp32 ONNX recognizer (:func:`export.onnx_export.export_personalized`).
        enrolled: ``{name: uint8 (n, H, W, 3) RGB crops}`` — the templates are computed with
            ``model`` itself, so they match what the bundle runs.
        heldout, heldout_labels: more crops of the device's people and their labels: names
            (str) join the enrolled identities of that name; other labels (ints) form a
            group of their own, paired only among themselves.
        cohort, cohort_labels: crops of other people (e.g. the public pack), scored against
            the device's images only (never against each other): ``cohort_name`` in the
            report.
        far_target: the threshold is calibrated at this FAR on the impostor pairs of the
            enrolled images (different names), of the held-out images, and of both against
            the cohort (:func:`calibrate_threshold`).
        threshold: use this threshold instead of calibrating one (the guards still apply).
        int8: add a static QDQ int8 model calibrated on ``calibration`` (default: the
            enrolled and held-out crops — the device's own data).
        min_tar, force: the guards. Unless ``force``, refuse (:class:`CalibrationError`,
            nothing written) when the TAR at the threshold — or, with no genuine pair, its
            estimate from augmented views of the enrolled images — is below ``min_tar``, or
            when an enrolled image scores below the threshold against its own identity's
            template. With ``force`` the problems are kept in ``calibration["warnings"]``.

    Returns:
        ``(path, report)``: report has the calibration statistics (also in bundle.json's
        ``"calibration"``), the model sizes and, with ``int8``, the held-out TAR at
        ``far_target`` of fp32 and int8.
    """
    from fedfr.metrics import tar_at_far

    meta = read_metadata(model)
    contract = json.loads(meta["fedfr.input_contract"])
    mean, std = float(contract["mean"]), float(contract["std"])
    if not enrolled:
        raise ValueError("nobody to enroll: a bundle needs at least one identity")
    crops = {n: np.stack([to_crop(i) for i in np.asarray(v)]) for n, v in enrolled.items()}
    embed = _embedder(Path(model), mean, std)  # one session for every embedding below
    enrolled_emb = {n: l2n(embed(c)) for n, c in crops.items()}
    templates = make_templates(enrolled_emb)
    report: dict = {"identities": len(templates)}
    held = held_emb = None
    names = list(crops)
    dev_emb = [enrolled_emb[n] for n in names]
    dev_labels = [np.full(len(crops[n]), n, dtype=object) for n in names]
    dev_groups = [np.full(len(crops[n]), "enrolled", dtype=object) for n in names]
    if heldout is not None and len(heldout):
        held = np.stack([to_crop(i) for i in np.asarray(heldout)])
        labels = np.asarray(heldout_labels)
        held_emb = embed(held)
        named = labels.dtype.kind in "USO"
        dev_emb.append(held_emb)
        dev_labels.append(labels.astype(str).astype(object))
        dev_groups.append(np.full(len(held), "enrolled" if named else "heldout", dtype=object))
    # genuine estimate: augmented views of each enrolled image against its own template
    all_crops = np.concatenate([crops[n] for n in names])
    views, src = augmented_views(all_crops)
    owner = np.concatenate(dev_labels[:len(names)])[src]
    tmat = np.stack([templates[n] for n in owner])
    estimate = np.sum(l2n(embed(views)) * tmat, axis=1)
    cohort_emb = None
    if cohort is not None and len(cohort):
        cohort_emb = embed(np.stack([to_crop(i) for i in np.asarray(cohort)]))
    if threshold is None:
        cal = calibrate_threshold(np.concatenate(dev_emb), np.concatenate(dev_labels),
                                  far_target, groups=np.concatenate(dev_groups),
                                  cohort=cohort_emb, cohort_labels=cohort_labels,
                                  cohort_name=cohort_name, genuine_estimate=estimate)
        threshold = cal["threshold"]
    else:
        cal = {"threshold": float(threshold), "far_target": far_target, "source": "given",
               "genuine_estimate": {"source": GENUINE_ESTIMATE_SOURCE, "pairs": len(estimate),
                                    "tar": float(np.mean(estimate >= threshold)),
                                    "min_score": float(estimate.min())}}
    # each enrolled image against its own identity's template: an identity whose images
    # mostly fail (median below the threshold) is one the bundle rejects; a single outlier
    # photo among many is reported, not refused
    self_scores = {n: enrolled_emb[n] @ templates[n] for n in names}
    self_min = {n: float(np.min(v)) for n, v in self_scores.items()}
    self_median = {n: float(np.median(v)) for n, v in self_scores.items()}
    worst = min(self_min, key=self_min.get)
    cal["self_scores"] = {"min": self_min[worst], "min_identity": worst,
                          "images_below_threshold": int(sum(int((v < threshold).sum())
                                                            for v in self_scores.values())),
                          "images": int(sum(len(v) for v in self_scores.values())),
                          "below_threshold": {n: v for n, v in self_median.items()
                                              if v < threshold}}
    problems = calibration_problems(cal, min_tar)
    if problems and not force:
        raise CalibrationError(
            "refusing to write the bundle: " + "; ".join(problems) + ". Enroll more photos "
            "of each person (and train again), calibrate at a higher FAR, or write it anyway "
            "with --force (force=True).\n" + format_calibration(cal), cal)
    if problems:
        cal["warnings"] = problems
    cal["min_tar"] = float(min_tar)
    report["calibration"] = cal
    int8_path = None
    with tempfile.TemporaryDirectory() as tmp:
        if int8:
            from export.quantize import quantize_static_int8

            calib = calibration
            if calib is None:
                calib = np.concatenate([*crops.values(), *([held] if held is not None else [])])
            calib = normalize(np.stack([to_crop(i) for i in np.asarray(calib)]), mean, std)
            int8_path = quantize_static_int8(model, Path(tmp) / INT8_MODEL, calib)
            if held is not None and len(np.unique(labels)) > 1:
                iu = np.triu_indices(len(held), k=1)
                same = (labels[:, None] == labels[None, :])[iu].astype(np.int64)
                int8_emb = _embedder(int8_path, mean, std)(held)
                for k, emb in (("fp32", held_emb), ("int8", int8_emb)):
                    e = l2n(emb)
                    report[f"tar_at_far_{k}"] = float(tar_at_far((e @ e.T)[iu], same,
                                                                 far_target))
        path = write_bundle(out, model=model, templates=templates,
                            num_images={n: len(c) for n, c in crops.items()},
                            threshold=float(threshold), far_target=far_target,
                            calibration=report["calibration"], int8_model=int8_path,
                            make_zip=make_zip)
    root = path if path.is_dir() else Path(out)
    report["sizes"] = {p.name: p.stat().st_size for p in root.glob("*.onnx")}
    report["path"] = str(path)
    return path, report
