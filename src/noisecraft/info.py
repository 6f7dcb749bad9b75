"""What this installation runs on: versions, the CPU's instruction set, threads, the CPU kernels the
networks chose (nets/kernels.py) and the devices available — for ``noisecraft info`` and bug reports."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from . import __version__
from .nets.kernels import cpu_kernels, isa


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def devices() -> list[str]:
    """The devices torch can run on here: cpu, then each CUDA device by name, then mps."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def system_info() -> dict[str, str]:
    """One line per fact, in the order ``noisecraft info`` prints them."""
    kernels = cpu_kernels()
    config = torch.__config__.show()
    libraries = ", ".join(
        name
        for name, present in (
            ("MKL", "USE_MKL=ON" in config),
            ("oneDNN", torch.backends.mkldnn.is_available()),
        )
        if present
    )
    return {
        "noisecraft": __version__,
        "torch": f"{torch.__version__} ({libraries or 'no MKL, no oneDNN'})",
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "isa": isa(),
        "threads": f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op",
        "cpu kernels": f"{kernels.spec()} ({kernels.source})",
        "devices": ", ".join(devices()),
    }


def version_line() -> str:
    """``noisecraft --version``: the version, torch's, the ISA and the kernel choice."""
    kernels = cpu_kernels()
    return f"noisecraft {__version__} (torch {torch.__version__}, {isa()}, {kernels.spec()})"


def format_info(info: dict[str, str]) -> str:
    """The facts as aligned ``name: value`` lines."""
    width = max(len(name) for name in info)
    return "\n".join(f"{name + ':':<{width + 1}} {value}" for name, value in info.items())
