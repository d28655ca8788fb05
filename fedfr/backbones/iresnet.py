"""IResNet (ArcFace's improved ResNet), state-dict compatible with insightface arcface_torch.

Attribute names, creation order, BatchNorm eps (1e-5) and initialization follow arcface_torch's
``iresnet.py``, so ``IResNet(...).state_dict()`` has the same keys, shapes and order as
``get_model("r50")`` there and its ``backbone.pth`` files load with ``strict=True``.
Unlike arcface_torch the fc input size follows the input size (112x112 -> 7x7 final map), which
lets the narrow ``ir_tiny`` variant run at 64x64.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from fedfr.backbones.registry import BackboneSpec, register_backbone
from fedfr.data.contract import ARCFACE_CONTRACT, InputContract

__all__ = ["IBasicBlock", "IResNet"]

_BN_EPS = 1e-5


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation basic block: BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN (+ skip).

    Input ``(N, inplanes, H, W)`` -> output ``(N, planes, ceil(H/stride), ceil(W/stride))``.
    """

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=_BN_EPS)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=_BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=_BN_EPS)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + identity


class IResNet(nn.Module):
    """IResNet backbone.

    Args:
        layers: number of blocks in each of the four stages, e.g. ``(3, 4, 14, 3)`` for r50.
        widths: channels of the four stages (arcface: ``(64, 128, 256, 512)``); the stem has
            ``widths[0]`` channels.
        embedding_size: output dimension.
        input_size: ``(H, W)`` of the input; the fc layer takes ``widths[3] * h * w`` features
            where ``h = ceil(H / 16)``, ``w = ceil(W / 16)``.
        dropout: dropout probability before fc (arcface default 0).
        zero_init_residual: zero the ``bn2`` weight of each block (arcface option).

    Forward: float32 ``(N, 3, H, W)`` normalized faces -> float32 ``(N, embedding_size)``
    unnormalized embeddings (the ``features`` BatchNorm1d output).
    """

    def __init__(
        self,
        layers: Sequence[int],
        *,
        widths: Sequence[int] = (64, 128, 256, 512),
        embedding_size: int = 512,
        input_size: tuple[int, int] = (112, 112),
        dropout: float = 0.0,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(f"IResNet needs 4 stages, got layers={layers} widths={widths}")
        self.embedding_size = int(embedding_size)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=_BN_EPS)
        self.prelu = nn.PReLU(self.inplanes)
        self.layer1 = self._make_layer(widths[0], layers[0], stride=2)
        self.layer2 = self._make_layer(widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(widths[3], layers[3], stride=2)
        self.bn2 = nn.BatchNorm2d(widths[3], eps=_BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        h, w = self.input_size
        for _ in range(4):  # each stage halves the map (3x3 conv, stride 2, padding 1)
            h, w = (h + 1) // 2, (w + 1) // 2
        self.fc = nn.Linear(widths[3] * h * w, self.embedding_size)
        self.features = nn.BatchNorm1d(self.embedding_size, eps=_BN_EPS)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False  # as in arcface_torch: a fixed-scale BN

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes, eps=_BN_EPS),
            )
        modules = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        modules += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.bn2(x), 1)
        x = self.fc(self.dropout(x))
        return self.features(x)


_ARCFACE_LAYERS = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
}

for _name, _layers in _ARCFACE_LAYERS.items():
    register_backbone(
        BackboneSpec(
            name=_name,
            factory=partial(IResNet, _layers),
            embedding_size=512,
            contract=ARCFACE_CONTRACT,
            arcface_compatible=True,
            description=f"arcface_torch IResNet-{_name[1:]}, stages {_layers}, 112x112 -> 512",
        )
    )

register_backbone(
    BackboneSpec(
        name="ir_tiny",
        factory=partial(IResNet, (1, 1, 1, 1), widths=(16, 32, 64, 128)),
        embedding_size=128,
        contract=InputContract(height=64, width=64),
        arcface_compatible=False,
        description="narrow IResNet for CPU experiments, stages (1,1,1,1), 64x64 -> 128",
    )
)
