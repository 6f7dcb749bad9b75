"""A short name for a model's weights: the same tensors give the same name on any device or dtype cast
after it was taken."""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn


def weights_hash(modules: list[nn.Module], extra: tuple[str, ...] = ()) -> str:
    """First 16 hex digits of a SHA-256 over the modules' tensors (sorted by name), then ``extra``
    (other models' hashes: a cascade's base)."""
    digest = hashlib.sha256()
    for module in modules:
        for key, value in sorted(module.state_dict().items()):
            digest.update(key.encode())
            for tensor in _state_tensors(value):
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for text in extra:
        digest.update(text.encode())
    return digest.hexdigest()[:16]


def _state_tensors(value: object) -> list[Tensor]:
    """The plain tensors of one state_dict entry: itself, or an int8 linear's packed (weight, bias) as
    integer values, scales and zero points (nets/quantize.py); other entries (dtypes) hash nothing."""
    if isinstance(value, tuple | list):
        return [t for item in value for t in _state_tensors(item)]
    if not isinstance(value, Tensor):
        return []
    if value.is_quantized:
        per_channel = value.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
        scales = value.q_per_channel_scales() if per_channel else torch.tensor([value.q_scale()])
        return [value.int_repr(), scales.double()]
    return [value]
