"""Resident memory of ``noisecraft serve`` under concurrent img2img requests whose images decode large.

Each request carries ``--images`` init images and a mask of ``--side``² RGBA pixels, sent as PNGs of
one colour (a few kB each that decode to 64 MiB at 4096²). ``--clients`` such requests are sent at
once, ``--waves`` times. The server's RSS is read from /proc before, at its peak (VmHWM) and after
the waves; the status codes are counted. Linux only (reads /proc).

    .venv/bin/python benchmarks/server_memory.py --clients 8 --images 8 --side 4096
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from common import append_results, machine_lines  # noqa: E402
from server_helpers import serve_command, status_mib  # noqa: E402


def big_png(side: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), (200, 30, 30, 255)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def burst(url: str, body: dict, clients: int) -> Counter:
    barrier = threading.Barrier(clients)

    def one(_: int) -> int:
        with httpx.Client(timeout=300) as client:
            barrier.wait(60)
            return client.post(f"{url}/sdapi/v1/img2img", json=body).status_code

    with ThreadPoolExecutor(clients) as pool:
        return Counter(pool.map(one, range(clients)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--images", type=int, default=8, help="init images per request (batch_size too)")
    parser.add_argument("--side", type=int, default=4096, help="each image is side × side RGBA")
    parser.add_argument("--waves", type=int, default=2)
    parser.add_argument("--serve-args", default="", help="extra flags for noisecraft serve")
    parser.add_argument("--note", default="")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    print("\n".join(machine_lines(args.note)), flush=True)

    from conftest import make_tiny_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_pipeline().save(Path(tmp) / "tiny")
        with serve_command(model, args.serve_args.split(), Path(tmp) / "server.log") as (url, process):
            image = big_png(args.side)
            body = {"prompt": "x", "init_images": [image] * args.images, "mask": image,
                    "batch_size": args.images, "steps": 2, "width": 8, "height": 8}  # fmt: skip
            warm = {"prompt": "x", "init_images": [big_png(8)], "steps": 2, "width": 8, "height": 8}
            assert httpx.post(f"{url}/sdapi/v1/img2img", json=warm, timeout=60).status_code == 200
            before = status_mib(process.pid)
            codes: Counter = Counter()
            start = time.monotonic()
            for _ in range(args.waves):
                codes += burst(url, body, args.clients)
            seconds = time.monotonic() - start
            time.sleep(1.0)
            peak, after = status_mib(process.pid, "VmHWM"), status_mib(process.pid, "VmRSS")

    kib = len(image) * 3 / 4 / 1024
    rows = (
        f"| {args.clients} clients × {args.waves} waves, {args.images} init images + mask of "
        f"{args.side}² RGBA ({kib:.0f} KiB PNG each) | {before:.0f} | {peak:.0f} | {after:.0f} | "
        f"{dict(sorted(codes.items()))} | {seconds:.1f} |"
    )
    table = (
        "| burst | RSS before MiB | peak MiB | after MiB | status codes | s |\n|---|---|---|---|---|---|\n"
        + rows
    )
    print(table)
    if not args.no_append:
        append_results("Server memory under large-decoding img2img bursts", table, args.note)


if __name__ == "__main__":
    main()
