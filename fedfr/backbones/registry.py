"""The backbone registry: one name -> how to build it and what input it takes.

A factory is called as ``factory(embedding_size=..., input_size=(H, W), **kw)``;
:func:`build_backbone` fills ``embedding_size`` and ``input_size`` from the spec unless the caller
overrides them, and forwards every other keyword (e.g. ``dropout=``) unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from fedfr.data.contract import InputContract
from fedfr.errors import FedFRError, UnknownNameError

logger = logging.getLogger(__name__)

__all__ = [
    "BackboneSpec",
    "available_backbones",
    "build_backbone",
    "get_backbone_spec",
    "register_backbone",
]


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone architecture.

    Attributes:
        name: registry name, e.g. ``"r50"``.
        factory: builds the module; called as ``factory(embedding_size=, input_size=, **kw)``.
        embedding_size: default embedding dimension (the module outputs ``(N, embedding_size)``).
        contract: the input the module takes; ``contract.size`` is its default input size.
        arcface_compatible: whether ``state_dict()`` keys/shapes/order equal insightface
            arcface_torch's ``get_model(name)``, so its ``backbone.pth`` files load directly.
        description: one line for listings.
    """

    name: str
    factory: Callable[..., nn.Module]
    embedding_size: int
    contract: InputContract
    arcface_compatible: bool
    description: str


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add ``spec`` to the registry and return it.

    Raises:
        FedFRError: if a backbone with the same name is already registered.
    """
    if spec.name in _REGISTRY:
        raise FedFRError(f"backbone {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def available_backbones() -> list[str]:
    """The registered names, sorted."""
    return sorted(_REGISTRY)


def get_backbone_spec(name: str) -> BackboneSpec:
    """The spec registered under ``name``.

    Raises:
        UnknownNameError: if ``name`` is not registered; the message lists the registered names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        choices = ", ".join(available_backbones())
        raise UnknownNameError(f"unknown backbone {name!r}; choose one of: {choices}") from None


def build_backbone(name: str, **kw: object) -> nn.Module:
    """Build a fresh (randomly initialized) backbone.

    Args:
        name: a registered name (see :func:`available_backbones`).
        **kw: forwarded to the factory; ``embedding_size`` and ``input_size`` (``(H, W)``) default
            to the spec's values. Other common keywords: ``dropout`` (float).

    Returns:
        A module mapping float32 ``(N, 3, H, W)`` normalized faces to float32
        ``(N, embedding_size)`` unnormalized embeddings. It carries plain attributes ``arch``
        (``name``), ``embedding_size`` and ``input_size`` (not in its state dict).

    Raises:
        UnknownNameError: if ``name`` is not registered.
    """
    spec = get_backbone_spec(name)
    kw.setdefault("embedding_size", spec.embedding_size)
    kw.setdefault("input_size", spec.contract.size)
    model = spec.factory(**kw)
    model.arch = name
    logger.debug("built backbone %s with %s", name, kw)
    return model
