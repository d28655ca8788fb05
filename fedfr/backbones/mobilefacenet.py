"""MobileFaceNet, state-dict compatible with insightface arcface_torch's ``mbf`` / ``mbf_large``.

Module names (``layers``, ``conv_sep``, ``features`` = GDC), nesting and order follow
arcface_torch's ``mobilefacenet.py``. The GDC depthwise kernel equals the final feature map,
``ceil(H/16) x ceil(W/16)`` (7x7 at 112x112), so the narrow ``mbf_tiny`` runs at 64x64.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from fedfr.backbones.registry import BackboneSpec, register_backbone
from fedfr.data.contract import ARCFACE_CONTRACT, InputContract

__all__ = ["MobileFaceNet"]

_Pair = tuple[int, int]


class ConvBlock(nn.Module):
    """Conv (no bias) -> BatchNorm2d -> PReLU, as ``self.layers`` (indices 0, 1, 2)."""

    def __init__(
        self, in_c: int, out_c: int, kernel: _Pair = (1, 1), stride: _Pair = (1, 1),
        padding: _Pair = (0, 0), groups: int = 1,
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c),
            nn.PReLU(out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LinearBlock(ConvBlock):
    """Conv (no bias) -> BatchNorm2d, no activation."""

    def __init__(
        self, in_c: int, out_c: int, kernel: _Pair = (1, 1), stride: _Pair = (1, 1),
        padding: _Pair = (0, 0), groups: int = 1,
    ) -> None:
        nn.Module.__init__(self)
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c),
        )


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to ``groups`` -> depthwise 3x3 -> linear 1x1 project."""

    def __init__(
        self, in_c: int, out_c: int, residual: bool = False, kernel: _Pair = (3, 3),
        stride: _Pair = (2, 2), padding: _Pair = (1, 1), groups: int = 1,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_c, groups),
            ConvBlock(groups, groups, kernel, stride, padding, groups=groups),
            LinearBlock(groups, out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    """``num_block`` residual stride-1 :class:`DepthWise` blocks of width ``c``."""

    def __init__(self, c: int, num_block: int, groups: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *[DepthWise(c, c, True, (3, 3), (1, 1), (1, 1), groups) for _ in range(num_block)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _FlattenDropout(nn.Module):
    """Flatten to ``(N, C)`` then dropout; parameter-free, so it keeps GDC's layer indices."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(torch.flatten(x, 1), self.p, self.training)


class GDC(nn.Module):
    """Global depthwise conv over the whole ``kernel`` map -> flatten -> Linear -> BatchNorm1d."""

    def __init__(self, channels: int, embedding_size: int, kernel: _Pair, dropout: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(channels, channels, kernel, groups=channels),
            _FlattenDropout(dropout),
            nn.Linear(channels, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MobileFaceNet(nn.Module):
    """MobileFaceNet backbone.

    Args:
        blocks: residual blocks per stage (arcface ``mbf``: ``(1, 4, 6, 2)``).
        scale: stage widths are ``64 * scale`` and ``128 * scale``.
        embedding_size: output dimension.
        input_size: ``(H, W)``; the GDC kernel is ``(ceil(H/16), ceil(W/16))``.
        group_scale: multiplies arcface's expansion widths (64/128/256/512); 1 for arcface.
        feature_channels: width of ``conv_sep`` and the GDC (512 in arcface).
        dropout: dropout before the GDC's Linear (0 in arcface; parameter-free).

    Forward: float32 ``(N, 3, H, W)`` normalized faces -> float32 ``(N, embedding_size)``.
    """

    def __init__(
        self,
        blocks: Sequence[int] = (1, 4, 6, 2),
        scale: float = 2,
        *,
        embedding_size: int = 512,
        input_size: tuple[int, int] = (112, 112),
        group_scale: float = 1.0,
        feature_channels: int = 512,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.embedding_size = int(embedding_size)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        c1, c2 = int(64 * scale), int(128 * scale)
        g = [int(v * group_scale) for v in (64, 128, 128, 256, 256, 512, 256)]
        self.layers = nn.ModuleList([ConvBlock(3, c1, (3, 3), (2, 2), (1, 1))])
        if blocks[0] == 1:
            self.layers.append(ConvBlock(c1, c1, (3, 3), (1, 1), (1, 1), groups=g[0]))
        else:
            self.layers.append(Residual(c1, blocks[0], groups=g[1]))
        self.layers.extend([
            DepthWise(c1, c1, groups=g[1]),
            Residual(c1, blocks[1], groups=g[2]),
            DepthWise(c1, c2, groups=g[3]),
            Residual(c2, blocks[2], groups=g[4]),
            DepthWise(c2, c2, groups=g[5]),
            Residual(c2, blocks[3], groups=g[6]),
        ])
        self.conv_sep = ConvBlock(c2, feature_channels)
        h, w = self.input_size
        for _ in range(4):  # four stride-2 3x3 convs with padding 1
            h, w = (h + 1) // 2, (w + 1) // 2
        self.features = GDC(feature_channels, self.embedding_size, (h, w), dropout)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.features(self.conv_sep(x))


_SPECS = [
    ("mbf", dict(blocks=(1, 4, 6, 2), scale=2), 512, ARCFACE_CONTRACT, True,
     "arcface_torch MobileFaceNet (scale 2, blocks 1-4-6-2), 112x112 -> 512"),
    ("mbf_large", dict(blocks=(2, 8, 12, 4), scale=4), 512, ARCFACE_CONTRACT, True,
     "arcface_torch MobileFaceNet large (scale 4, blocks 2-8-12-4), 112x112 -> 512"),
    ("mbf_tiny",
     dict(blocks=(1, 2, 2, 1), scale=0.5, group_scale=0.25, feature_channels=128),
     128, InputContract(height=64, width=64), False,
     "narrow MobileFaceNet for CPU experiments (32/64 channels), 64x64 -> 128"),
]

for _name, _kw, _emb, _contract, _compat, _desc in _SPECS:
    register_backbone(
        BackboneSpec(_name, partial(MobileFaceNet, **_kw), _emb, _contract, _compat, _desc)
    )
