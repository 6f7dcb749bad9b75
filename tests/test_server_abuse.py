"""A bounded burst of concurrent, oversized and malformed requests against `noisecraft serve` running as
its own process on loopback: no answer is a 5xx, the process's peak and final memory stay under the
caps stated below, and it still answers a valid request afterwards (well under 40 s on 2 cores)."""

from __future__ import annotations

import base64
import io
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image
from server_helpers import decode_png, png_b64, serve_command, status_mib, wait_until

SERVE = ["--queue-size", "4", "--max-batch", "8", "--max-steps", "8", "--max-pixels", "4096"]
VALID = {"prompt": "a red circle", "steps": 2, "width": 8, "height": 8}
# Caps on the server's resident memory above its level after one warm-up request. One 4096² RGBA image
# decodes to 64 MiB (96 MiB with its RGB copy); images are decoded one at a time, so the peak holds
# about one of them, plus request bodies in flight. Before the admission existed, one request of 8
# such images took ≈ 630 MB and 8 concurrent ones 4.7 GB more, ≈ 700 MB of it kept afterwards.
PEAK_CAP_MIB = 400
KEPT_CAP_MIB = 64
BURSTS = 2


def _large_png(side: int = 4096) -> str:
    """A one-colour RGBA PNG: ≈ 70 kB that decodes to side² × 4 bytes."""
    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), (10, 200, 30, 255)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def server(tiny_pipeline_dir, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("abuse") / "server.log"
    with serve_command(tiny_pipeline_dir, SERVE, log_path) as (url, process):
        yield url, process, log_path


def _requests(url: str) -> list[tuple[str, dict, set[int]]]:
    """(name, httpx.request keyword arguments, the statuses it may get); the burst sends each once."""
    large, small = _large_png(), png_b64(Image.new("RGB", (8, 8), "red"))
    truncated = base64.b64encode(base64.b64decode(small)[:40]).decode()
    img2img = f"{url}/sdapi/v1/img2img"
    many = {**VALID, "init_images": [large] * 8, "mask": large, "batch_size": 8}
    one = {**VALID, "init_images": [large], "mask": large}
    busy = {200, 429}
    cases = [(f"8 images of 4096² {i}", dict(method="POST", url=img2img, json=many), {413}) for i in range(8)]
    cases += [
        (f"1 image + mask of 4096² {i}", dict(method="POST", url=img2img, json=one), busy) for i in range(4)
    ]
    cases += [
        (f"valid {i}", dict(method="POST", url=f"{url}/sdapi/v1/txt2img", json=VALID), busy) for i in range(4)
    ]
    cases += [
        ("text/plain", dict(method="POST", url=f"{url}/sdapi/v1/interrupt", content=b"x",
                            headers={"Content-Type": "text/plain"}), {415}),
        ("foreign page", dict(method="POST", url=f"{url}/sdapi/v1/interrupt",
                              headers={"Origin": "https://evil.example"}), {403}),
        ("rebound host", dict(method="GET", url=f"{url}/v1/status", headers={"Host": "evil.example"}), {400}),
        ("not json", dict(method="POST", url=f"{url}/sdapi/v1/txt2img", content=b"{nope",
                          headers={"Content-Type": "application/json"}), {422}),
        ("truncated image", dict(method="POST", url=img2img,
                                 json={**VALID, "init_images": [truncated]}), {422, 429}),
        ("not base64", dict(method="POST", url=f"{url}/v1/generate",
                            json={"prompt": "x", "init_image": "%%%"}), {422}),
        ("30 MiB body", dict(method="POST", url=f"{url}/v1/generate", content=b" " * (30 * 2**20),
                             headers={"Content-Type": "application/json"}), {413}),
        ("adaptive, guidance 100", dict(method="POST", url=f"{url}/sdapi/v1/txt2img",
                                        json={**VALID, "sampler_name": "ode_adaptive", "cfg_scale": 100,
                                              "batch_size": 8}), {422, 429}),
        ("steps over the limit", dict(method="POST", url=f"{url}/sdapi/v1/txt2img",
                                      json={"steps": 9}), {422}),
    ]  # fmt: skip
    return cases


def _burst(url: str) -> Counter:
    """Every case at once (a barrier releases them together), plus clients that leave after 10 ms."""
    cases = _requests(url)
    barrier = threading.Barrier(len(cases))

    def send(case) -> int:
        name, kwargs, allowed = case
        with httpx.Client(timeout=60) as client:
            barrier.wait(30)
            response = client.request(**kwargs)
        assert response.status_code in allowed, f"{name} → {response.status_code}: {response.text[:200]}"
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1
        return response.status_code

    def leave(_: int) -> None:
        try:
            httpx.post(f"{url}/sdapi/v1/txt2img", json=VALID, timeout=0.01)
        except httpx.TimeoutException:
            pass

    with ThreadPoolExecutor(len(cases) + 4) as pool:
        leaving = list(pool.map(leave, range(4)))
        codes = Counter(pool.map(send, cases))
    assert leaving == [None] * 4
    return codes


def test_burst_of_abuse_gets_4xx_bounded_memory_and_a_live_server(server):
    url, process, log_path = server
    with httpx.Client(base_url=url, timeout=60) as client:
        assert client.post("/sdapi/v1/txt2img", json=VALID).status_code == 200  # warm: first use allocates
        one = {**VALID, "init_images": [_large_png()]}
        assert client.post("/sdapi/v1/img2img", json=one).status_code == 200  # and the decoding path
        baseline = status_mib(process.pid, "VmRSS")
        Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # VmHWM from now on: the bursts' peak
        codes = Counter()
        for _ in range(BURSTS):
            codes += _burst(url)
        assert process.poll() is None, "the server died"
        wait_until(lambda: client.get("/v1/status").json()["queued"] == 0, 30, "the queue to drain")
        wait_until(lambda: not client.get("/v1/status").json()["running"], 30, "the last job to end")
        peak = status_mib(process.pid, "VmHWM") - baseline
        kept = status_mib(process.pid, "VmRSS") - baseline
        print(f"abuse: {dict(sorted(codes.items()))}; peak +{peak:.0f} MiB, kept +{kept:.0f} MiB")
        assert max(codes) < 500 and codes[413] >= 8 * BURSTS and codes[200] >= 1, codes
        assert peak < PEAK_CAP_MIB, f"peak resident memory {peak:.0f} MiB above the warm server's"
        assert kept < KEPT_CAP_MIB, f"{kept:.0f} MiB kept after the bursts"
        response = client.post("/sdapi/v1/txt2img", json=VALID)
        assert response.status_code == 200 and decode_png(response.json()["images"][0]).size == (8, 8)
    assert "Traceback" not in log_path.read_text(), log_path.read_text()[-3000:]
