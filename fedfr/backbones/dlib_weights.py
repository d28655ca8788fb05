"""dlib's face-recognition weights -> a :class:`~fedfr.backbones.dlib_resnet.DlibResNet` state dict.

The source: ``dlib_face_recognition_resnet_model_v1.dat`` as PyPI's ``face-recognition-models``
0.3.0 ships it (CC0; 22,466,066 bytes, sha256 :data:`DLIB_R34_SHA256`), installed by the
README's set-up like any other package; nothing is downloaded at run time. The file is located
without importing the package (its ``__init__`` imports ``pkg_resources``, gone from new
setuptools) and checked against the pinned sha256 before it is read.

The file is dlib's serialization of the whole network, input layer first. Only three kinds of
layer hold parameters, and each starts with its version string:

* ``con_4``: a float32 tensor of the filters ``(out, in, kh, kw)`` followed by the ``out``
  biases, then the filter count, kernel size, strides and paddings (dlib's variable-length
  integers: a byte giving the length and the sign, then little-endian bytes);
* ``affine_``: a tensor of ``gamma`` then ``beta`` per channel;
* ``fc_2``: the output and input counts, then a tensor of the ``(in, out)`` weight matrix
  (dlib multiplies ``x @ W``; no bias in this network).

A tensor is a version (2), four integers ``(n, k, nr, nc)`` and ``n*k*nr*nc`` little-endian
float32. The reader finds the 29 convolutions, 29 affines and the fc in file order, checks every
kernel, stride and padding against :class:`DlibResNet`'s, and fails loudly on anything else.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path

import numpy as np

from fedfr.errors import DataFormatError, FedFRError

__all__ = ["DLIB_R34_SHA256", "dlib_r34_state_dict", "dlib_weights_path", "read_dlib_layers"]

DLIB_R34_FILE = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_R34_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
_HINT = ("dlib's face-recognition weights come from the 'face-recognition-models' package "
         "(CC0): `bash scripts/setup.sh` installs it (pip install face-recognition-models==0.3.0)")


def dlib_weights_path() -> Path:
    """The installed ``.dat`` file, checked against :data:`DLIB_R34_SHA256`.

    Raises:
        FedFRError: the package is not installed, or the file is not the pinned one.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    locs = list(spec.submodule_search_locations or []) if spec else []
    for loc in locs:
        p = Path(loc) / "models" / DLIB_R34_FILE
        if p.is_file():
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            if h.hexdigest() != DLIB_R34_SHA256:
                raise FedFRError(f"{p} has sha256 {h.hexdigest()}, not the pinned "
                                 f"{DLIB_R34_SHA256}; reinstall face-recognition-models==0.3.0")
            return p
    raise FedFRError(f"{DLIB_R34_FILE} not found. {_HINT}")


class _Reader:
    def __init__(self, data: bytes, pos: int, source: str) -> None:
        self.d, self.pos, self.source = data, pos, source

    def fail(self, what: str) -> DataFormatError:
        return DataFormatError(f"{self.source}: {what} at byte {self.pos}")

    def int(self) -> int:
        if self.pos >= len(self.d):
            raise self.fail("truncated integer")
        head = self.d[self.pos]
        n, neg = head & 0x0F, head & 0x80
        if not 1 <= n <= 8 or self.pos + 1 + n > len(self.d):
            raise self.fail(f"bad integer header {head:#x}")
        v = int.from_bytes(self.d[self.pos + 1:self.pos + 1 + n], "little")
        self.pos += 1 + n
        return -v if neg else v

    def string(self) -> str:
        n = self.int()
        s = self.d[self.pos:self.pos + n]
        self.pos += n
        return s.decode("ascii", "replace")

    def tensor(self) -> np.ndarray:
        if self.int() != 2:
            raise self.fail("unknown tensor version")
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        end = self.pos + 4 * count
        if min(shape) < 0 or end > len(self.d):
            raise self.fail(f"tensor of shape {shape} past the end of the file")
        arr = np.frombuffer(self.d, "<f4", count, self.pos).astype(np.float32)
        self.pos = end
        return arr.reshape(shape)


_LAYER = re.compile(rb"\x01([\x05\x07\x04])(con_4|affine_|fc_2)")


def read_dlib_layers(path: str | Path) -> list[dict]:
    """The parameter layers of a dlib face-recognition network file, input first:
    ``{"kind": "con", "weight", "bias", "stride", "padding"}``, ``{"kind": "affine", "gamma",
    "beta"}``, ``{"kind": "fc", "weight" (out, in)}``.

    Raises:
        DataFormatError: a layer whose fields cannot be read.
    """
    data = Path(path).read_bytes()
    layers = []
    for m in _LAYER.finditer(data):
        if m.group(1)[0] != len(m.group(2)):
            continue
        r = _Reader(data, m.end(), str(path))
        kind = m.group(2)
        if kind == b"con_4":
            params = r.tensor().ravel()
            out_c, nr, nc, sy, sx, py, px = (r.int() for _ in range(7))
            n_w = params.size - out_c
            if n_w <= 0 or n_w % (out_c * nr * nc):
                raise r.fail(f"convolution parameters ({params.size}) do not fit {out_c} "
                             f"filters of {nr}x{nc}")
            in_c = n_w // (out_c * nr * nc)
            layers.append({"kind": "con", "weight": params[:n_w].reshape(out_c, in_c, nr, nc),
                           "bias": params[n_w:].copy(), "stride": (sy, sx),
                           "padding": (py, px)})
        elif kind == b"affine_":
            params = r.tensor().ravel()
            if params.size % 2:
                raise r.fail(f"affine parameters of odd size {params.size}")
            k = params.size // 2
            layers.append({"kind": "affine", "gamma": params[:k].copy(),
                           "beta": params[k:].copy()})
        else:
            n_out, n_in = r.int(), r.int()
            params = r.tensor().ravel()
            if params.size != n_in * n_out:
                raise r.fail(f"fc parameters ({params.size}) are not {n_in}x{n_out} (a bias?)")
            layers.append({"kind": "fc", "weight": params.reshape(n_in, n_out).T.copy()})
    return layers


def dlib_r34_state_dict(path: str | Path | None = None) -> dict[str, np.ndarray]:
    """A :class:`~fedfr.backbones.dlib_resnet.DlibResNet` state dict (float32 numpy) from dlib's
    file (default: :func:`dlib_weights_path`).

    Raises:
        FedFRError / DataFormatError: the file is missing, not the pinned one, or its layers do
            not match the architecture (the message says which layer and how).
    """
    from fedfr.backbones.dlib_resnet import DlibResNet

    src = Path(path) if path is not None else dlib_weights_path()
    layers = read_dlib_layers(src)
    net = DlibResNet()
    convs = [m for m in net.modules() if m.__class__.__name__ == "Conv2d"]
    want = len(convs) * 2 + 1
    if len(layers) != want:
        raise DataFormatError(f"{src}: {len(layers)} parameter layers, the network has {want}")
    names = {id(m): n for n, m in net.named_modules()}
    state: dict[str, np.ndarray] = {}
    it = iter(layers)
    order = [m for m in net.modules() if m.__class__.__name__ in ("Conv2d", "Affine", "Linear")]
    for mod in order:
        layer = next(it)
        name = names[id(mod)]
        kind = {"Conv2d": "con", "Affine": "affine", "Linear": "fc"}[mod.__class__.__name__]
        if layer["kind"] != kind:
            raise DataFormatError(f"{src}: expected a {kind} layer for {name}, found "
                                  f"{layer['kind']}")
        if kind == "con":
            if (layer["weight"].shape != tuple(mod.weight.shape)
                    or layer["stride"] != tuple(mod.stride)
                    or layer["padding"] != tuple(mod.padding)):
                raise DataFormatError(
                    f"{src}: {name} is {layer['weight'].shape} stride {layer['stride']} padding "
                    f"{layer['padding']}, the network's {tuple(mod.weight.shape)} stride "
                    f"{tuple(mod.stride)} padding {tuple(mod.padding)}")
            state[f"{name}.weight"] = layer["weight"]
            state[f"{name}.bias"] = layer["bias"]
        elif kind == "affine":
            if layer["gamma"].shape != tuple(mod.weight.shape):
                raise DataFormatError(f"{src}: {name} has {layer['gamma'].shape[0]} channels, "
                                      f"the network {mod.weight.shape[0]}")
            state[f"{name}.weight"] = layer["gamma"]
            state[f"{name}.bias"] = layer["beta"]
        else:
            if layer["weight"].shape != tuple(mod.weight.shape):
                raise DataFormatError(f"{src}: fc is {layer['weight'].shape}, the network's "
                                      f"{tuple(mod.weight.shape)}")
            state[f"{name}.weight"] = layer["weight"]
    missing = set(net.state_dict()) - set(state)
    if missing:
        raise DataFormatError(f"{src}: no weights for {sorted(missing)[:5]}")
    return state


def dlib_r34_backbone(path: str | Path | None = None):
    """A :class:`~fedfr.backbones.dlib_resnet.DlibResNet` with dlib's weights, in eval mode."""
    import torch

    from fedfr.backbones import build_backbone

    net = build_backbone("dlib_r34")
    net.load_state_dict({k: torch.from_numpy(v) for k, v in dlib_r34_state_dict(path).items()})
    return net.eval()


def save_dlib_checkpoint(out: str | Path, public_images: np.ndarray | None = None,
                         public_labels: np.ndarray | None = None, *, device: str = "cpu",
                         weights: str | Path | None = None) -> Path:
    """A fedfr checkpoint of dlib's network (arch ``dlib_r34``), ready to publish as version 1.

    FedFR's local step needs the generic model's public class embeddings; a network trained
    elsewhere has none for *our* public identities, so they are computed here the way a
    prototype classifier would: each public identity's L2-normalized mean embedding by dlib's
    network (of its ArcFace-aligned crops, reframed to dlib's chip), and the model's
    ``fedfr.thresholds`` (FAR 1e-1/1e-2/1e-3) are calibrated on the same images. Without public
    images the checkpoint has neither (fine for export and evaluation, not for FedFR).
    """
    import torch

    from fedfr.checkpoint import save_checkpoint
    from fedfr.data.contract import DLIB_CONTRACT
    from fedfr.evaluation import THRESHOLDS_KEY, model_thresholds, validation_report
    from fedfr.train.embedding import embed_images

    net = dlib_r34_backbone(weights)
    extra = {}
    meta = {"source": f"dlib {DLIB_R34_FILE} (face-recognition-models 0.3.0, CC0), sha256 "
                      f"{DLIB_R34_SHA256}"}
    if public_images is not None:
        labels = np.asarray(public_labels, np.int64)
        if len(labels) != len(public_images) or not len(labels):
            raise ValueError(f"{len(public_images)} public images, {len(labels)} labels")
        emb = embed_images(net.to(device), public_images, contract=DLIB_CONTRACT,
                           device=device, amp=False)
        classes = np.unique(labels)
        if not np.array_equal(classes, np.arange(len(classes))):
            raise ValueError("public labels must be 0..C-1")
        cent = np.stack([emb[labels == c].mean(0) for c in classes])
        cent /= np.linalg.norm(cent, axis=1, keepdims=True)
        extra["head.public_class_embeddings"] = torch.from_numpy(cent.astype(np.float32))
        meta["public_class_embeddings"] = f"class means of {len(labels)} public images"
        # the generic model's thresholds, calibrated where it is deployed from: these images
        # (dlib's network never trained on them; another domain than real photos if synthetic)
        meta[THRESHOLDS_KEY] = model_thresholds(
            validation_report(emb, labels),
            f"public images given to import-dlib: {len(labels)} images of {len(classes)} "
            f"identities, not in dlib's training data")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, net.cpu(), arch="dlib_r34", embedding_size=128,
                    contract=DLIB_CONTRACT, extra_tensors=extra, metadata=meta)
    return out
