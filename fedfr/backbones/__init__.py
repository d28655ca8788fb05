"""Face-recognition backbones: arcface_torch-compatible IResNet / MobileFaceNet and CPU variants.

Registered names: ``r18``, ``r34``, ``r50``, ``r100``, ``mbf``, ``mbf_large`` (arcface_torch
compatible, 112x112 -> 512), ``ir_tiny``, ``mbf_tiny`` (64x64 -> 128, for CPU experiments) and
``dlib_r34`` (dlib's pretrained face-recognition ResNet, 150x150 dlib chips -> 128).
"""

from fedfr.backbones import dlib_resnet as _dlib_resnet  # noqa: F401  (registers dlib_r34)
from fedfr.backbones import iresnet as _iresnet  # noqa: F401  (registers r18..r100, ir_tiny)
from fedfr.backbones import mobilefacenet as _mobilefacenet  # noqa: F401  (registers mbf*)
from fedfr.backbones.dlib_resnet import DlibResNet
from fedfr.backbones.iresnet import IResNet
from fedfr.backbones.mobilefacenet import MobileFaceNet
from fedfr.backbones.registry import (
    BackboneSpec,
    available_backbones,
    build_backbone,
    get_backbone_spec,
    register_backbone,
)

__all__ = [
    "BackboneSpec",
    "DlibResNet",
    "IResNet",
    "MobileFaceNet",
    "available_backbones",
    "build_backbone",
    "get_backbone_spec",
    "register_backbone",
]
