"""The input contract: the one definition of what a face-recognition model takes.

arcface_torch's convention, used by training, evaluation, ONNX export metadata and the web demo:
aligned 112x112 RGB faces, pixel values mapped by ``(x - 127.5) / 127.5`` to [-1, 1], laid out as
NCHW float32 (:data:`ARCFACE_CONTRACT`). dlib's face-recognition network takes another crop
(:data:`DLIB_CONTRACT`): a 150x150 chip framed its own way (the face higher in it; dlib's
``get_face_chip_details`` with padding 0.25) and per-channel means, ``(x - mean_c) / 256``.

``alignment`` names the crop's geometry: where the five landmarks (eyes, nose tip, mouth
corners) sit in it (:func:`fedfr.data.align.template_for`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: The crop geometries :attr:`InputContract.alignment` may name.
ALIGNMENTS = ("arcface", "dlib")


@dataclass(frozen=True)
class InputContract:
    """What a backbone expects as input.

    Attributes:
        height, width: spatial size in pixels of the aligned face crop.
        channel_order: ``"RGB"`` (never BGR: convert OpenCV images first).
        mean, std: normalization ``(x - mean) / std`` applied to uint8 values in [0, 255]; a
            number, or one per channel (R, G, B).
        layout: ``"NCHW"``.
        dtype: ``"float32"``.
        alignment: the crop's geometry, ``"arcface"`` (insightface's 112x112 template, scaled
            to the size) or ``"dlib"`` (dlib's face chip, padding 0.25).
    """

    height: int = 112
    width: int = 112
    channel_order: str = "RGB"
    mean: float | tuple[float, float, float] = 127.5
    std: float | tuple[float, float, float] = 127.5
    layout: str = "NCHW"
    dtype: str = "float32"
    alignment: str = "arcface"

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            v = getattr(self, name)
            if isinstance(v, (list, tuple, np.ndarray)):
                v = tuple(float(x) for x in v)
                if len(v) != 3:
                    raise ValueError(f"{name} must be a number or 3 numbers (R, G, B), got {v}")
                object.__setattr__(self, name, v)
            else:
                object.__setattr__(self, name, float(v))
        if not np.all(np.asarray(self.std, np.float64) > 0):
            raise ValueError(f"std must be > 0, got {self.std}")
        if self.alignment not in ALIGNMENTS:
            raise ValueError(f"unknown alignment {self.alignment!r}; choose one of "
                             f"{', '.join(ALIGNMENTS)}")

    def channel_mean(self) -> np.ndarray:
        """float32 ``(3,)``: the mean per channel (R, G, B)."""
        return np.broadcast_to(np.asarray(self.mean, np.float32), (3,)).copy()

    def channel_std(self) -> np.ndarray:
        """float32 ``(3,)``: the std per channel (R, G, B)."""
        return np.broadcast_to(np.asarray(self.std, np.float32), (3,)).copy()

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)``."""
        return (self.height, self.width)

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """Map uint8 RGB images to the model's input.

        Args:
            images: uint8 array ``(N, H, W, 3)`` or ``(H, W, 3)``, RGB, values 0..255, with
                ``(H, W) == self.size``.

        Returns:
            float32 array ``(N, 3, H, W)`` in [-1, 1].

        Raises:
            ValueError: on a wrong dtype, rank, channel count or spatial size.
        """
        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"expected images of shape (N, H, W, 3), got {arr.shape}")
        if arr.dtype != np.uint8:
            raise ValueError(f"expected uint8 images, got dtype {arr.dtype}")
        if arr.shape[1:3] != self.size:
            raise ValueError(
                f"expected {self.height}x{self.width} aligned faces, "
                f"got {arr.shape[1]}x{arr.shape[2]}"
            )
        out = (arr.astype(np.float32) - self.channel_mean()) / self.channel_std()
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))

    def denormalize(self, tensor: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`normalize`: float32 NCHW -> uint8 NHWC (rounded, clipped)."""
        arr = np.asarray(tensor, dtype=np.float32).transpose(0, 2, 3, 1)
        arr = arr * self.channel_std() + self.channel_mean()
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)

    def to_dict(self) -> dict[str, object]:
        """A JSON-serializable description (goes into checkpoint and ONNX metadata)."""
        d = asdict(self)
        for k in ("mean", "std"):
            if isinstance(d[k], tuple):
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> InputContract:
        """Inverse of :meth:`to_dict` (a dict without ``alignment``, written before it existed,
        is ``"arcface"``); unknown keys are rejected."""
        return cls(**d)  # type: ignore[arg-type]


#: arcface_torch's contract. The default everywhere.
ARCFACE_CONTRACT = InputContract()

#: dlib's face-recognition network (``dlib_r34``): its 150x150 chip, its per-channel means, /256
#: (``input_rgb_image_sized<150>``).
DLIB_CONTRACT = InputContract(height=150, width=150, mean=(122.782, 117.001, 104.298),
                              std=256.0, alignment="dlib")
