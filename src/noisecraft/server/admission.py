"""Admission to the queue: a request's images are decoded only once it holds a queue slot and its
share of a server-wide budget of decoded pixels, one image at a time on one decoding thread.

Memory stays bounded by the queue: a waiting job holds its images at the model's size, never as
sent. Before decoding, each image's size is read from its header: a request whose images add up to
more than ``max_request_pixels`` is a 413; one that finds the queue full, or the budget of pixels
being decoded (``max_decoding_pixels``) taken by others, is a 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TypeVar

from fastapi import HTTPException
from PIL import Image

from .jobs import Job, QueueFull, Worker

T = TypeVar("T")


class PixelBudget:
    """Decoded pixels that admitted requests may hold at once (thread-safe counter)."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._lock = threading.Lock()

    def take(self, pixels: int) -> bool:
        with self._lock:
            if self.used + pixels > self.limit:
                return False
            self.used += pixels
            return True

    def give(self, pixels: int) -> None:
        with self._lock:
            self.used -= pixels


class Admission:
    """The queue slots and the pixel budget; ``admit`` holds both while a request decodes its images."""

    def __init__(self, worker: Worker, max_request_pixels: int, max_decoding_pixels: int):
        self.worker, self.max_request_pixels = worker, max_request_pixels
        self.budget = PixelBudget(max_decoding_pixels)
        # One thread: at most one image is decoded at a time, and its memory is reused by the next.
        self._decoder = ThreadPoolExecutor(1, thread_name_prefix="noisecraft-decode")

    @asynccontextmanager
    async def admit(
        self, images: Sequence[Image.Image], owner: str | None = None
    ) -> AsyncIterator[Callable[[Job], int]]:
        """Hold a queue slot and the pixels of ``images`` (opened, not decoded); yields submit(job) →
        the job's position (the job marked as ``owner``'s). 413 / 429 as the module says; everything is
        given back on the way out."""
        pixels = sum(image.width * image.height for image in images)
        if pixels > self.max_request_pixels:
            raise HTTPException(
                413, f"the images decode to {pixels} pixels; one request may send {self.max_request_pixels}"
            )
        try:
            self.worker.reserve()
        except QueueFull as err:
            raise HTTPException(429, str(err), headers={"Retry-After": str(err.retry_after)}) from None
        submitted = False

        def submit(job: Job) -> int:
            nonlocal submitted
            submitted, job.owner = True, owner
            return self.worker.submit(job, reserved=True)

        try:
            if not self.budget.take(pixels):
                retry = str(self.worker.retry_after())
                raise HTTPException(
                    429, "too many images are being decoded; retry later", {"Retry-After": retry}
                )
            try:
                yield submit
            finally:
                self.budget.give(pixels)
                if pixels:
                    self._decoder.submit(_return_freed_memory)
        finally:
            if not submitted:
                self.worker.release()

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the decoding thread."""
        return await asyncio.get_running_loop().run_in_executor(self._decoder, fn, *args)

    def close(self) -> None:
        self._decoder.shutdown(wait=False, cancel_futures=True)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


def _return_freed_memory() -> None:
    """Hand the decoded images' freed pages back to the OS (glibc keeps them in its heap otherwise)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
