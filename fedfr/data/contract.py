"""The input contract: the one definition of what a face-recognition model takes.

arcface_torch's convention, used by training, evaluation, ONNX export metadata and the web demo:
aligned 112x112 RGB faces, pixel values mapped by ``(x - 127.5) / 127.5`` to [-1, 1], laid out as
NCHW float32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class InputContract:
    """What a backbone expects as input.

    Attributes:
        height, width: spatial size in pixels of the aligned face crop.
        channel_order: ``"RGB"`` (never BGR: convert OpenCV images first).
        mean, std: normalization ``(x - mean) / std`` applied to uint8 values in [0, 255].
        layout: ``"NCHW"``.
        dtype: ``"float32"``.
    """

    height: int = 112
    width: int = 112
    channel_order: str = "RGB"
    mean: float = 127.5
    std: float = 127.5
    layout: str = "NCHW"
    dtype: str = "float32"

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
        out = (arr.astype(np.float32) - self.mean) / self.std
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))

    def denormalize(self, tensor: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`normalize`: float32 NCHW -> uint8 NHWC (rounded, clipped)."""
        arr = np.asarray(tensor, dtype=np.float32) * self.std + self.mean
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)

    def to_dict(self) -> dict[str, object]:
        """A JSON-serializable description (goes into checkpoint and ONNX metadata)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> InputContract:
        """Inverse of :meth:`to_dict`; unknown keys are rejected."""
        return cls(**d)  # type: ignore[arg-type]


#: arcface_torch's contract. The default everywhere.
ARCFACE_CONTRACT = InputContract()
