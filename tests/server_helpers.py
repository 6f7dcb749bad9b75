"""Helpers for the server tests: run the app under uvicorn on a free loopback port, decode images."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import uvicorn
from PIL import Image


@contextlib.contextmanager
def serve(app, timeout: float = 20.0) -> Iterator[str]:
    """Start ``app`` on 127.0.0.1 (a port the OS picks) in a thread; yield its base URL; stop it after."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


@contextlib.contextmanager
def serve_command(model_dir: Path, args: list[str], log_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """``noisecraft serve --model model_dir *args`` as its own process on a free loopback port, its
    output in ``log_path``; yields (base URL, process) once it answers; stops it after."""
    port = free_port()
    command = [sys.executable, "-m", "noisecraft", "serve", "--model", str(model_dir), "--port", str(port)]
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command + args, stdout=log, stderr=log, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        import httpx

        assert process.poll() is None, log_path.read_text()
        try:
            return httpx.get(f"{url}/v1/status", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, 60, "noisecraft serve to start")
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


def status_mib(pid: int, key: str = "VmRSS") -> float:
    """A memory figure of a process from /proc/PID/status, in MiB (VmRSS: now; VmHWM: its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def decode_png(data: str) -> Image.Image:
    """A base64 PNG or data URL → PIL image (loaded)."""
    image = Image.open(
        io.BytesIO(base64.b64decode(data.partition(",")[2] if data.startswith("data:") else data))
    )
    image.load()
    return image


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, dict]]:
    """(event, data) pairs from the lines of a text/event-stream body (comments skipped)."""
    kind, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield kind, json.loads("\n".join(data))
            kind, data = "message", []
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` every 20 ms; the seconds it took; AssertionError naming ``what`` on timeout."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start
