"""Low-rank adapters (LoRA, Hu et al. 2021): W' = W + s·(α/r)·B·A with A [r, in], B [out, r], r ≪ in, out.

Two ways to run one, both here:

- merged (inference): ``MergedAdapters`` writes W + Σ sᵢ·ΔWᵢ into the weights once, so a sampling
  step costs what the base model's does; it keeps each touched weight's original, so changing a
  scale or removing an adapter restores the base exactly (scale 0 is bit for bit the base model).
- on the fly (training): ``LoraLayer`` wraps a linear or convolution and adds B(A(x))·α/r to its
  output; only A and B train, the wrapped layer stays frozen. B starts at zero, so a fresh adapter
  changes nothing.

A convolution's adapter is LoCon's: A is a k×k convolution to r channels, B a 1×1 convolution.
Targets are named by parameter ("unet.down.1.attn.block.attn.to_qkv.weight"); an update may cover a
slice of rows of a fused weight (a foreign ``to_q`` is the first third of our ``to_qkv``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .layers import PaddedConv2d


class AdapterError(ValueError):
    """An adapter that does not fit the model (another architecture, a tensor of the wrong shape)."""


@dataclass
class LoraUpdate:
    """One weight's low-rank update: ``W[rows] += scale·(alpha/rank)·up @ down`` (flattened)."""

    target: str  # our parameter, with its module's root: "unet.…weight" or "text_encoder.…weight"
    down: Tensor  # A: [r, in] or [r, in, kh, kw]
    up: Tensor  # B: [out, r] or [out, r, 1, 1]
    alpha: float  # α; the update is scaled by α / r
    part: tuple[int, int] = (0, 1)  # (index, count): which equal slice of the target's rows it covers

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def delta(self) -> Tensor:
        """ΔW = (α/r)·B·A in float32, shaped [out, in, *kernel] (a linear's: [out, in])."""
        down, up = self.down.float().flatten(1), self.up.float().flatten(1)  # [r, in·k·k], [out, r]
        if up.shape[1] != down.shape[0]:
            raise AdapterError(f"{self.target}: up has rank {up.shape[1]} but down has {down.shape[0]}")
        return (up @ down).reshape(up.shape[0], *self.down.shape[1:]) * (self.alpha / self.rank)


def _rows(weight: Tensor, part: tuple[int, int]) -> slice:
    index, count = part
    size = weight.shape[0] // count
    return slice(index * size, (index + 1) * size)


def check_fits(update: LoraUpdate, weight: Tensor) -> None:
    """AdapterError unless ``update`` fits ``weight`` (a 1×1 kernel may stand for a linear's matrix)."""
    rows = weight[_rows(weight, update.part)]
    out, inputs = update.up.shape[0], update.down[0].numel()
    if out != rows.shape[0] or inputs != rows[0].numel():
        raise AdapterError(
            f"the adapter was made for another model: {update.target} has {rows.shape[0]}×"
            f"{rows[0].numel()} inputs here, the adapter's update is {out}×{inputs}"
        )


class MergedAdapters:
    """Adapters merged into a model's weights, each with its own scale; the originals are kept so that
    any change (or ``clear``) starts again from the exact base weights."""

    def __init__(self, roots: dict[str, nn.Module]):
        self.roots = {name: module for name, module in roots.items() if module is not None}
        self.originals: dict[str, Tensor] = {}  # parameter → its base value (only those touched)
        self.applied: list[tuple[int, float]] = []  # what the weights hold now: (id(updates), scale)

    def parameters(self) -> dict[str, nn.Parameter]:
        """Every parameter of the roots by target name ("net.…weight"), looked up afresh (``to()`` may
        have moved them)."""
        roots = self.roots.items()
        return {f"{root}.{name}": p for root, module in roots for name, p in module.named_parameters()}

    def check(self, updates: Iterable[LoraUpdate], params: dict[str, nn.Parameter] | None = None) -> None:
        """AdapterError for the first update that does not fit this model."""
        params = self.parameters() if params is None else params
        for update in updates:
            if update.target not in params:
                raise AdapterError(f"the adapter targets {update.target}, which this model does not have")
            check_fits(update, params[update.target])

    @torch.no_grad()
    def set(self, adapters: list[tuple[list[LoraUpdate], float]]) -> None:
        """Make the weights base + Σ scale·ΔW over ``adapters`` (a scale-0 adapter is left out)."""
        key = [(id(updates), scale) for updates, scale in adapters if scale != 0]
        if key == self.applied:
            return
        params = self.parameters()
        for updates, _ in adapters:
            self.check(updates, params)
        sums: dict[str, Tensor] = {}
        for updates, scale in adapters:
            if scale == 0:
                continue
            for update in updates:
                weight = params[update.target]
                total = sums.setdefault(update.target, torch.zeros(weight.shape, dtype=torch.float32))
                rows = _rows(weight, update.part)
                total[rows] += scale * update.delta().reshape(total[rows].shape)
        for target, original in self.originals.items():  # back to the base where nothing is added now
            if target not in sums:
                params[target].copy_(original)  # copy_ on the parameter: memos see a new version
        for target, total in sums.items():
            weight = params[target]
            original = self.originals.setdefault(target, weight.detach().clone())
            weight.copy_((original.float() + total.to(original.device)).to(original.dtype))
        self.applied = key

    def clear(self) -> None:
        """The base weights again, exactly."""
        self.set([])


# ----------------------------------------------------------------------------------------------
# Training: adapters computed on the fly beside frozen layers.


def _conv_like(base: nn.Conv2d, rank: int) -> nn.Conv2d:
    """A bias-free convolution to ``rank`` channels with the base's kernel, stride and padding."""
    if isinstance(base, PaddedConv2d):  # rows wrapped or not, as the base's
        kernel, stride = base.kernel_size[0], base.stride[0]
        return PaddedConv2d(base.in_channels, rank, kernel, stride, base.row_padding, bias=False)
    return nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, bias=False)


class LoraLayer(nn.Module):
    """A frozen linear or convolution plus a trainable low-rank branch: base(x) + (α/r)·B(A(x))."""

    def __init__(self, base: nn.Linear | nn.Conv2d, rank: int, alpha: float):
        super().__init__()
        self.base, self.rank, self.alpha = base.requires_grad_(False), rank, alpha
        if isinstance(base, nn.Conv2d):
            self.down: nn.Module = _conv_like(base, rank)
            self.up: nn.Module = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        else:
            self.down, self.up = (
                nn.Linear(base.in_features, rank, bias=False),
                nn.Linear(rank, base.out_features, bias=False),
            )
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))  # as peft; B = 0: no change at first
        nn.init.zeros_(self.up.weight)
        weight = base.weight
        self.to(device=weight.device, dtype=weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        branch = self.up(self.down(x))
        return self.base(x) + branch * (self.alpha / self.rank)

    def update(self, target: str) -> LoraUpdate:
        """This layer's adapter as a LoraUpdate of ``target`` (detached copies)."""
        down, up = self.down.weight.detach().clone(), self.up.weight.detach().clone()
        return LoraUpdate(target, down, up, self.alpha)


def attach(net: nn.Module, names: Iterable[str], rank: int, alpha: float) -> dict[str, LoraLayer]:
    """Wrap each named module of ``net`` in a LoraLayer (in place); freeze everything else."""
    net.requires_grad_(False)
    layers = {}
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        base = getattr(parent, child) if not child.isdigit() else parent[int(child)]
        if not isinstance(base, nn.Linear | nn.Conv2d):
            raise AdapterError(f"{name} is a {type(base).__name__}: adapters wrap linears and convolutions")
        layer = LoraLayer(base, rank, alpha)
        if child.isdigit():
            parent[int(child)] = layer
        else:
            setattr(parent, child, layer)
        layers[name] = layer
    return layers


def lora_layers(net: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    """(name of the wrapped module, layer) of every LoraLayer in ``net``."""
    for name, module in net.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


TARGET_KINDS = ("attention", "mlp", "conv")


def target_modules(net: nn.Module, kinds: Iterable[str] = ("attention",)) -> list[str]:
    """Names of the modules an adapter of these kinds wraps: attention projections (q/k/v and out),
    transformer MLPs, residual blocks' convolutions."""
    from .layers import Attention, FeedForward, GatedFeedForward
    from .unet import ResBlock

    unknown = set(kinds) - set(TARGET_KINDS)
    if unknown:
        raise AdapterError(f"unknown adapter target {sorted(unknown)[0]!r}; known: {', '.join(TARGET_KINDS)}")
    owners = {"attention": (Attention,), "mlp": (FeedForward, GatedFeedForward), "conv": (ResBlock,)}
    wanted = tuple(cls for kind in kinds for cls in owners[kind])
    names = []
    for name, module in net.named_modules():
        if isinstance(module, wanted):
            for child, sub in module.named_children():
                if isinstance(sub, nn.Linear | nn.Conv2d) and not (child == "emb"):
                    names.append(f"{name}.{child}" if name else child)
    return names
