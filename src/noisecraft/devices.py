"""Where models run: the device, the precision and the CPU threads, resolved and checked once.

    placement = resolve_placement("auto", "fp16", threads=4)   # CUDA, then MPS, else the CPU
    pipe = Pipeline.load("shapes").to(placement)

``generate``, ``serve`` and ``eval`` take ``--device``, ``--dtype`` and ``--threads`` and hand them to
``resolve_placement``; training's ``device`` field goes through ``resolve_device``. A device that
is not there, half precision on the CPU (no fp16/bf16 units: a CPU runs them far slower than fp32)
and a thread count below 1 are refused with one ``DeviceError`` saying why.

Half precision means the weights are stored in fp16/bf16 and the networks run under
``torch.autocast``; the sampler's own arithmetic stays in float32, and fixed tables (σ schedules,
noise-embedding frequencies) keep their precision. The GPU speed options (channels_last,
``torch.compile``, an SDPA kernel choice, bf16 autocast with fp32 weights) are off unless asked for,
and refused on the CPU: ``benchmarks/device_check.sh`` measures each on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass

import torch
from torch import nn

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ATTENTION = ("auto", "flash", "efficient", "math")  # F.scaled_dot_product_attention's kernels
HALF = (torch.float16, torch.bfloat16)


class DeviceError(ValueError):
    """A device, precision or thread count that cannot be used here; the message says why."""


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(choice: str | torch.device = "auto", index: int | None = None) -> torch.device:
    """``auto`` → CUDA, then MPS, else the CPU; ``cuda``/``mps`` only where present (``index``: the GPU)."""
    if isinstance(choice, torch.device):
        choice = str(choice)
    name, _, number = str(choice).partition(":")
    if name not in DEVICES or (number and not (name == "cuda" and number.isdigit())):
        raise DeviceError(f"device: unknown device {choice!r}; valid: {', '.join(DEVICES)} (or cuda:N)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("device: 'cuda' was asked for, but torch sees no CUDA GPU here")
        gpu = int(number) if number else (index or 0)
        if gpu >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise DeviceError(f"device: cuda:{gpu} was asked for but this machine has {count} GPU(s)")
        return torch.device("cuda", gpu)
    if name == "mps" and not mps_available():
        raise DeviceError("device: 'mps' was asked for but Apple's Metal backend is not available here")
    return torch.device(name)


def resolve_dtype(choice: str | torch.dtype, device: torch.device) -> torch.dtype:
    """fp32, fp16 or bf16 (a name or a torch dtype); half precision only on an accelerator."""
    dtype = DTYPES.get(choice) if isinstance(choice, str) else choice
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise DeviceError(f"dtype: unknown precision {choice!r}; valid: {', '.join(DTYPES)}")
    if dtype in HALF and device.type == "cpu":
        raise DeviceError(
            f"dtype: {_name(dtype)} runs on a GPU (CUDA or MPS) only: CPUs have no half-precision units and "
            "run it many times slower than fp32; use fp32 on the CPU"
        )
    if dtype == torch.float64 and device.type == "mps":
        raise DeviceError("dtype: Apple's Metal backend has no float64; use fp32, fp16 or bf16")
    return dtype


def set_threads(threads: int | None) -> None:
    """torch's CPU threads for this process (None: what torch picked); a count below 1 is refused."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise DeviceError(f"threads: must be a positive integer, got {threads!r}")
    torch.set_num_threads(threads)


def cast_then_move(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` cast to ``dtype`` where it is, then moved: a float64 CPU table reaches MPS (which has no
    float64) as float32."""
    return tensor.to(dtype=dtype).to(device)


def wide_float(device: torch.device) -> torch.dtype:
    """The widest float ``device`` has for accumulators: float64, except on MPS (float32)."""
    return torch.float32 if device.type == "mps" else torch.float64


@dataclass(frozen=True)
class Placement:
    """A resolved device and weight precision, plus the GPU speed options (all off by default)."""

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32  # the weights' precision (fp16/bf16: run under autocast)
    autocast: torch.dtype | None = None  # bf16 autocast over fp32 weights (a speed option)
    channels_last: bool = False  # convolution weights in NHWC (activations follow from the first)
    compile: bool = False  # torch.compile the network (CUDA)
    attention: str = "auto"  # force one SDPA kernel: flash, efficient or math

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", torch.device(self.device))
        object.__setattr__(self, "dtype", resolve_dtype(self.dtype, self.device))  # a name or a dtype
        if isinstance(self.autocast, str):
            object.__setattr__(self, "autocast", DTYPES.get(self.autocast, self.autocast))
        if self.attention not in ATTENTION:
            raise DeviceError(f"attention: unknown kernel {self.attention!r}; valid: {', '.join(ATTENTION)}")
        if self.autocast is not None and self.autocast not in HALF:
            raise DeviceError(f"autocast: must be fp16 or bf16, got {self.autocast}")
        asked = [name for name, on in self._speed_options().items() if on]
        if asked and self.device.type == "cpu":
            raise DeviceError(f"{', '.join(asked)}: GPU speed options; on the CPU they stay off")
        if self.compile and self.device.type != "cuda":
            raise DeviceError("compile: torch.compile is offered on CUDA only")

    def _speed_options(self) -> dict[str, bool]:
        return {
            "autocast": self.autocast is not None, "channels_last": self.channels_last,
            "compile": self.compile, "attention": self.attention != "auto",
        }  # fmt: skip

    def __str__(self) -> str:
        return f"{self.device} {_name(self.dtype)}"

    @property
    def compute_dtype(self) -> torch.dtype | None:
        """The precision networks run at under autocast, or None (no autocast: they run at ``dtype``)."""
        return self.dtype if self.dtype in HALF else self.autocast

    @property
    def state_dtype(self) -> torch.dtype:
        """The sampler's own precision: float32, or float64 for float64 weights."""
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    def context(self) -> contextlib.AbstractContextManager:
        """Autocast and the SDPA kernel choice, around everything that runs the networks."""
        stack = contextlib.ExitStack()
        if self.compute_dtype is not None:
            stack.enter_context(torch.autocast(self.device.type, dtype=self.compute_dtype))
        if self.attention != "auto":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                        "math": SDPBackend.MATH}  # fmt: skip
            stack.enter_context(sdpa_kernel(backends[self.attention]))
        return stack

    def place(self, module: nn.Module | None) -> None:
        """Move ``module`` here and cast it to ``dtype``; in half precision only the parameters: buffers
        (fixed tables such as noise-embedding frequencies) keep their precision, autocast mixes the two."""
        if module is None:
            return
        if self.dtype not in HALF:
            module.to(self.device, self.dtype)
        else:
            module.to(self.device)
            with torch.no_grad():
                for p in module.parameters():
                    if p.is_floating_point() and p.dtype != self.dtype:
                        p.data = p.data.to(self.dtype)
        if self.channels_last:
            module.to(memory_format=torch.channels_last)


def resolve_placement(
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "fp32",
    threads: int | None = None,
    **speed: object,
) -> Placement:
    """Device, precision and threads checked once (threads are set now); ``speed``: Placement's options."""
    set_threads(threads)
    resolved = resolve_device(device)
    return Placement(resolved, resolve_dtype(dtype, resolved), **speed)


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--dtype`` and ``--threads``, checked by ``resolve_placement`` (one line, exit 2)."""
    parser.add_argument(
        "--device", default="auto",
        help=f"{', '.join(DEVICES)} (default: %(default)s: CUDA, then Apple's MPS, else the CPU)",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", default="fp32",
        help=f"weight precision: {', '.join(DTYPES)}; fp16/bf16 on a GPU only (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch, ≥ 1 (default: what torch picks)"
    )


def placement_from_args(args: argparse.Namespace) -> Placement:
    """The Placement of parsed ``add_device_arguments`` flags."""
    return resolve_placement(args.device, args.dtype, args.threads)


def _name(dtype: torch.dtype) -> str:
    return next((name for name, value in DTYPES.items() if value == dtype), str(dtype))
