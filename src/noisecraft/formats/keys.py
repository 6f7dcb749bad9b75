"""Apply a key map: build our module's state dict from a foreign checkpoint's tensors, using every
foreign tensor exactly once and naming any that is missing, left over or of the wrong shape."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor


class CheckpointError(ValueError):
    """A checkpoint whose tensors do not make the model: the message names the tensor."""


@dataclass
class TensorMap:
    """Our tensor name → the foreign tensors it is made of (several are concatenated along dim 0:
    fused q/k/v). Entries for tensors our module lacks are never consulted."""

    entries: dict[str, list[str]]


def convert(
    tensor_map: TensorMap,
    target: Mapping[str, Tensor],
    names: Iterable[str],
    get: Callable[[str], Tensor],
    what: str,
    ignored: Iterable[str] = (),
) -> dict[str, Tensor]:
    """Our state dict for ``target``'s keys, shapes and dtypes, from the foreign tensors ``names`` read
    one at a time by ``get`` (a lazy file reads each once); CheckpointError on any mismatch."""
    available, used = set(names), set(ignored)
    out: dict[str, Tensor] = {}
    for key, like in target.items():
        parts = tensor_map.entries.get(key)
        if parts is None:
            raise CheckpointError(f"{what}: no foreign tensor is mapped to {key} (an unsupported variant)")
        missing = [p for p in parts if p not in available]
        if missing:
            raise CheckpointError(f"{what}: the checkpoint lacks {missing[0]}")
        used.update(parts)
        tensor = torch.cat([get(p) for p in parts]) if len(parts) > 1 else get(parts[0])
        if tensor.shape != like.shape:
            if tensor.numel() != like.numel() or tensor.ndim == like.ndim:
                shape = "×".join(map(str, tensor.shape))
                raise CheckpointError(f"{what}: {parts[0]} has shape {shape}, expected {tuple(like.shape)}")
            tensor = tensor.reshape(like.shape)  # a 1×1 convolution's kernel as a linear layer's matrix
        out[key] = tensor.to(like.dtype)
    left = sorted(available - used)
    if left:
        more = f" and {len(left) - 1} more" if len(left) > 1 else ""
        raise CheckpointError(f"{what}: tensor {left[0]}{more} in the checkpoint belongs to nothing")
    return out
