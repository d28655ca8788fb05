"""Recognizers built from the federated state: the global (generic) backbone and a device's
personalized recognizer (its local backbone followed by its DFC converter), and embedding
functions for :mod:`fedfr.evaluation`."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedfr.backbones import build_backbone
from fedfr.data.contract import InputContract
from fedfr.fl import GlobalModel
from fedfr.train.local_state import PrivateState
from fedfr.train.runtime import memory_format


def _to_torch_state(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in arrays.items()}


def numpy_state(module: nn.Module) -> dict[str, np.ndarray]:
    """A module's state dict as numpy copies (0-d counters stay 0-d), on the host."""
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def build_model_backbone(model: GlobalModel, state: dict[str, np.ndarray] | None = None,
                         device: torch.device | str = "cpu") -> nn.Module:
    """The backbone of ``model`` (or of another state dict of the same arch) on ``device``."""
    contract = InputContract.from_dict(model.contract)
    net = build_backbone(model.arch, embedding_size=model.embedding_size,
                         input_size=contract.size)
    net.load_state_dict(_to_torch_state(model.backbone if state is None else state))
    device = torch.device(device)
    return net.to(device, memory_format=memory_format(device))


class PersonalizedRecognizer(nn.Module):
    """The personalized recognizer: local backbone -> DFC converter (no converter: backbone).

    ``forward`` maps normalized (N, 3, H, W) input to (N, D) embeddings (not normalized;
    :func:`~fedfr.train.embedding.embed_images` normalizes).
    """

    def __init__(self, backbone: nn.Module, converter: torch.Tensor | None = None,
                 converter_bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.converter = None
        if converter is not None:
            d = converter.shape[0]
            self.converter = nn.Linear(d, d, bias=converter_bias is not None)
            with torch.no_grad():
                self.converter.weight.copy_(converter)
                if converter_bias is not None:
                    self.converter.bias.copy_(converter_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x).float()
        return f if self.converter is None else self.converter(f)


def personalized_recognizer(model: GlobalModel, private: PrivateState,
                            device: torch.device | str = "cpu", *,
                            converter: bool = True) -> PersonalizedRecognizer:
    """The device's personalized recognizer (eval mode) from its private state;
    ``converter=False``: its local backbone alone (the paired test of DFC).

    Raises:
        ValueError: the private state has no trained backbone yet.
    """
    if private.local_backbone is None:
        raise ValueError("no personalized recognizer before the first local round")
    net = build_model_backbone(model, private.local_backbone, device=device)
    conv = bias = None
    if converter and private.converter is not None:
        conv = torch.from_numpy(np.asarray(private.converter, np.float32))
        if private.converter_bias is not None:
            bias = torch.from_numpy(np.asarray(private.converter_bias, np.float32))
    return PersonalizedRecognizer(net, conv, bias).to(device).eval()


def personalized_embedder(model: GlobalModel, private: PrivateState, *,
                          device: torch.device | str = "cpu", batch_size: int = 256,
                          converter: bool = True):
    """An embedding function (uint8 crops -> (N, D) normalized) of the personalized
    recognizer (``converter=False``: without its converter); see :mod:`fedfr.evaluation`."""
    from fedfr.evaluation import backbone_embedder

    rec = personalized_recognizer(model, private, device=device, converter=converter)
    return backbone_embedder(rec, InputContract.from_dict(model.contract), device=device,
                             batch_size=batch_size)


def generic_embedder(model: GlobalModel, *, device: torch.device | str = "cpu",
                     batch_size: int = 256):
    """An embedding function of the global (generic) backbone."""
    from fedfr.evaluation import backbone_embedder

    net = build_model_backbone(model, device=device).eval()
    return backbone_embedder(net, InputContract.from_dict(model.contract), device=device,
                             batch_size=batch_size)
