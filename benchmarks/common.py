"""Shared benchmark plumbing: what machine this is, interleaved timing, and appending to RESULTS.md.

Benchmarks are scripts, not tests: each prints a table and appends it, with the exact command, the
machine and the date, to ``benchmarks/RESULTS.md`` so every figure there can be reproduced.

Timing rule: variants are run *interleaved* (A B A B …, the order flipped every round) after a
warm-up, and the median is reported. On a shared machine the speed drifts by tens of percent over
minutes as other jobs come and go; interleaving exposes every variant to the same drift, so their
ratio is far steadier than either time.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from noisecraft.info import cpu_model
from noisecraft.nets.kernels import cpu_kernels

RESULTS = Path(__file__).parent / "RESULTS.md"
# What time_interleaved reads: wall-clock seconds, or with --clock cpu this process's CPU seconds
# (all its threads), which other jobs on a loaded machine inflate far less (at 1 thread, barely).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


# ----------------------------------------------------------------------------------------------
# The machine.


def load_average() -> str:
    """The 1-minute load average: above the threads we use, something else ran beside us."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def tune_glibc_malloc() -> bool:
    """Keep freed memory in the process instead of returning it to the OS (glibc only); True if applied.

    glibc hands blocks above its mmap threshold (128 KiB – 32 MiB) back to the kernel on free, so
    every new activation tensor page-faults its memory in again: ~10⁵ faults and ~0.4 s of system
    time per training step of the peer-sized U-Net. Raising the mmap and trim thresholds lets the
    heap keep and reuse the blocks. This changes the process, not a network: it helps every net.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter numbers from <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 31))


def machine_lines(note: str = "") -> list[str]:
    """One line each: CPU, cores, torch and its kernels, threads, load; plus the user's note."""
    config = torch.__config__.show()
    mkl = "MKL" if "USE_MKL=ON" in config else "no MKL"
    dnn = "oneDNN" if torch.backends.mkldnn.is_available() else "no oneDNN"
    lines = [
        f"CPU: {cpu_model()}, {os.cpu_count()} logical cores, ISA {torch.backends.cpu.get_cpu_capability()}",
        f"torch {torch.__version__} ({mkl}, {dnn}), Python {platform.python_version()}",
        f"threads: torch.get_num_threads() = {torch.get_num_threads()}; load average {load_average()}",
        f"CPU kernels: {cpu_kernels().spec()} ({cpu_kernels().source})",
    ]
    if note:
        lines.append(f"note: {note}")
    return lines


# ----------------------------------------------------------------------------------------------
# Timing.


@dataclass
class Timing:
    """Seconds per call of one variant: every repeat, and their median."""

    name: str
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> str:
        """min–max of the repeats, for judging how noisy the median is."""
        return f"{min(self.seconds):.3f}–{max(self.seconds):.3f}"


def time_interleaved(
    variants: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Seconds per call of each variant, run interleaved (order flipped every round) after a warm-up;
    ``clock=time.process_time`` counts this process's CPU seconds instead of wall time."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats ≥ 1 and warmup ≥ 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    names = list(variants)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            start = clock()
            variants[name]()
            seconds[name].append(clock() - start)
    return {name: Timing(name, seconds[name]) for name in names}


# ----------------------------------------------------------------------------------------------
# Reporting.


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub-flavoured markdown table (floats already formatted by the caller)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    """The command that ran this script, as it could be pasted into a shell at the repo root."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    return " ".join(shlex.quote(part) for part in [".venv/bin/python", str(script), *sys.argv[1:]])


def append_results(title: str, body: str, note: str = "", path: Path = RESULTS) -> None:
    """Append a dated section (title, command, machine, body) to RESULTS.md."""
    stamp = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    machine = "\n".join(f"- {line}" for line in machine_lines(note))
    section = f"\n## {title} — {stamp}\n\n```\n{command_line()}\n```\n\n{machine}\n\n{body}\n"
    if not path.exists():
        path.write_text("# Benchmark results\n\nAppended by the scripts in this folder; newest last.\n")
    with path.open("a") as f:
        f.write(section)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--threads, --repeats, --warmup, --note, --no-append: shared by every benchmark."""
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per variant first")
    parser.add_argument("--note", default="", help="free text saved with the figures (e.g. concurrent jobs)")
    parser.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall", help="wall or process CPU seconds")
    parser.add_argument("--mallopt", action="store_true", help="tune glibc malloc first (tune_glibc_malloc)")


def setup(args: argparse.Namespace) -> None:
    """Apply --threads and print the machine description."""
    if args.threads < 1:
        raise ValueError(f"--threads must be ≥ 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    global clock
    clock = CLOCKS[args.clock]
    if args.clock != "wall":
        args.note = (
            args.note + "; " if args.note else ""
        ) + f"times are {args.clock} seconds (--clock {args.clock})"
    if args.mallopt:
        applied = tune_glibc_malloc()
        args.note = (args.note + "; " if args.note else "") + f"glibc malloc tuned: {applied}"
    print("\n".join(machine_lines(args.note)), flush=True)


def adherence_percent(result: dict, key: str = "top1") -> float:
    """An evaluation's headline adherence in percent: the classifier's accuracy (mnist), the oracle's
    share (shapes) or retrieval top-1 (emoji; ``key`` "top5", "paraphrase_top1", … for the others)."""
    a = result.get("adherence", {})
    for name in ("class_accuracy", "oracle_accuracy"):
        if name in a:
            return 100 * a[name]
    value = a.get(f"retrieval_{key}", a.get(key))
    if value is None:
        raise ValueError(f"the evaluation has no adherence figure {key!r}: {sorted(a)}")
    return 100 * value
