"""Which CPU kernels the networks use, chosen by the instruction set PyTorch runs (ISA) from a table
of measurements (benchmarks/speed_vs_diffusers.py --kernels, benchmarks/RESULTS.md).

Three choices, each a few percent to tens of percent of a U-Net step and none changing the maths:

- ``layout``: the activations of a U-Net on CPU, NHWC (channels_last) or NCHW;
- ``large_layout``: the same for large U-Nets (first level ≥ ``LARGE_WIDTH`` channels: Stable
  Diffusion's), where the measured winner differs;
- ``linear``: token-wise linears as oneDNN 1×1 convolutions or MKL's sgemm (``F.linear``).

A table keyed by ISA rather than a start-up measurement: the choice is then the same in every run on
a machine (so are the bits of an image), costs nothing at start-up, and does not flip with the load
of a shared machine. ``NOISECRAFT_KERNELS`` (or ``noisecraft --kernels``) overrides it, e.g.
``layout=nchw,linear=mkl``; ``auto`` is the table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch

ENV = "NOISECRAFT_KERNELS"
LAYOUTS, LINEARS = ("nhwc", "nchw"), ("onednn", "mkl")
LARGE_WIDTH = 256  # a U-Net whose first level is at least this wide counts as large (SD: 320)


@dataclass(frozen=True)
class CpuKernels:
    """The kernel choices in force, and where they came from."""

    layout: str = "nhwc"
    large_layout: str = "nchw"
    linear: str = "onednn"
    source: str = "table"

    def spec(self) -> str:
        """The choices as a ``NOISECRAFT_KERNELS`` string."""
        return f"layout={self.layout},large_layout={self.large_layout},linear={self.linear}"


# Measured per ISA (benchmarks/RESULTS.md, "Speed against diffusers" with --kernels; AVX-512:
# NHWC + oneDNN fastest, 1.35× diffusers; SD-sized nets NCHW, 1.21×); an ISA not in
# the table (ARM, plain x86-64) takes the AVX2 row, the nearest measured machine.
TABLE: dict[str, CpuKernels] = {
    "AVX512": CpuKernels("nhwc", "nchw", "onednn"),
    # AVX2 (emulated on the AVX-512 EPYC, 2026-12-04 22:4x): MKL linears 6% faster in a training step
    # and 2% in generation than oneDNN's; NHWC and NCHW within 2%. SD-sized nets: not yet measured.
    "AVX2": CpuKernels("nhwc", "nchw", "mkl"),
}

_chosen: CpuKernels | None = None


def isa() -> str:
    """The vector instruction set PyTorch's CPU kernels run here (AVX512, AVX2, DEFAULT, …)."""
    return torch.backends.cpu.get_cpu_capability()


def parse_kernels(spec: str, base: CpuKernels, source: str) -> CpuKernels:
    """``base`` with ``spec`` ("auto" or "key=value,…") applied; a ValueError names a bad choice."""
    spec = spec.strip().lower()
    if spec in ("", "auto"):
        return base
    valid = {"layout": LAYOUTS, "large_layout": LAYOUTS, "linear": LINEARS}
    changes: dict[str, str] = {}
    for item in spec.split(","):
        key, _, value = (part.strip() for part in item.partition("="))
        if key not in valid or value not in valid[key]:
            choices = "; ".join(f"{k}={'|'.join(v)}" for k, v in valid.items())
            raise ValueError(f"{source}: bad kernel choice {item!r}; valid: auto or {choices}")
        changes[key] = value
        if key == "layout" and "large_layout" not in changes:
            changes["large_layout"] = value  # "layout=" alone sets every U-Net
    return replace(base, **changes, source=source)


def cpu_kernels() -> CpuKernels:
    """The choices in force: set_cpu_kernels', else NOISECRAFT_KERNELS over the ISA's row of TABLE."""
    global _chosen
    if _chosen is None:
        row = TABLE.get(isa(), TABLE["AVX2"])
        base = replace(row, source=f"table ({isa()})")
        _chosen = parse_kernels(os.environ.get(ENV, ""), base, ENV) if os.environ.get(ENV) else base
    return _chosen


def set_cpu_kernels(spec: str | None) -> CpuKernels:
    """Override the table with ``spec`` (see parse_kernels); None: back to the table and the variable."""
    global _chosen
    _chosen = None
    if spec is not None:
        _chosen = parse_kernels(spec, cpu_kernels(), "--kernels")
    return cpu_kernels()


@torch.compiler.assume_constant_result  # torch.compile reads the choice once instead of breaking the graph
def linear_on_onednn() -> bool:
    """Whether token-wise linears run as oneDNN 1×1 convolutions on CPU."""
    return cpu_kernels().linear == "onednn"


@torch.compiler.assume_constant_result
def channels_last_for(width: int) -> bool:
    """Whether a U-Net with first-level ``width`` runs NHWC activations on CPU."""
    kernels = cpu_kernels()
    return (kernels.large_layout if width >= LARGE_WIDTH else kernels.layout) == "nhwc"

