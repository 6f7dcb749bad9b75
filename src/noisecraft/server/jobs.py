"""One model process, many clients: a bounded queue of jobs that one worker thread runs in order.

A job is a list of batches — closures that call the Pipeline with a step callback — and a
``finish`` that turns their images into the response. Both run on the worker thread, so the event
loop only moves bytes and stays responsive. The worker hands each job's steps, result or error to
the job's asyncio queue. The request side stops a job by setting ``cancelled`` (the client went
away: drop everything) or ``interrupted`` (A1111's /interrupt: return what there is); the step
callback checks both and raises a private exception that unwinds the sampler.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from PIL import Image
from starlette.requests import Request
from torch import Tensor

from ..images import make_grid, to_pil
from ..samplers import Callback, Step
from .imaging import encode_png

log = logging.getLogger("noisecraft.server")

Batch = Callable[[Callback], list[Image.Image]]  # one Pipeline call
Finish = Callable[[list[Image.Image], bool], Any]  # (images, interrupted) -> response payload
END_EVENTS = ("done", "error", "cancelled")


class QueueFull(Exception):
    """Every queue slot is taken: answer 429 with ``Retry-After``."""

    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class _Cancelled(Exception):
    """Raised by the step callback: the client went away, stop sampling."""


class _Interrupted(Exception):
    """Raised by the step callback: /interrupt asked to stop and keep what there is."""


class Job:
    """Work for the worker thread plus the asyncio queue its events arrive on."""

    def __init__(
        self,
        batches: list[Batch],
        finish: Finish,
        steps: int,
        previews: bool = False,
        task_id: str | None = None,
        paint: Callable[[Image.Image], Image.Image] | None = None,
    ):
        self.id = task_id or uuid.uuid4().hex  # 128 random bits: knowing it is what lets a client see the job
        self.owner: str | None = None  # the authenticated user who sent it (None: no credentials)
        self.batches, self.finish, self.steps, self.previews = batches, finish, steps, previews
        self.paint = paint  # how a preview frame is drawn (a sound model's: a coloured spectrogram)
        self.cancelled, self.interrupted = threading.Event(), threading.Event()
        self.loop = asyncio.get_running_loop()  # created on the event loop that will read the events
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def cancel(self) -> None:
        self.cancelled.set()

    def emit(self, kind: str, data: Any = None) -> None:
        """Queue an event for the request side (thread-safe)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, data))
        except RuntimeError:  # the event loop has closed: nobody is listening any more
            pass


@dataclass
class _Running:
    """What /progress reports about the job on the worker now."""

    job: Job
    number: int
    started: float
    batch: int = 0
    step: int = 0  # steps finished in this batch
    total: int = 0  # steps in this batch
    denoised: Tensor | None = None  # the latest x̂0 [B, C, H, W]

    def fraction(self) -> float:
        total = self.total or self.job.steps
        return min(1.0, (self.batch + min(1.0, self.step / max(total, 1))) / len(self.job.batches))


class Worker:
    """Runs queued jobs one at a time on its own thread; keeps counts and an estimate of job time."""

    def __init__(self, queue_size: int):
        self.queue_size = queue_size
        self._queue: queue.Queue[Job | None] = queue.Queue()  # bounded by the slots ``reserve`` hands out
        self._reserved = 0  # slots held by requests still decoding their images
        self._lock = threading.Lock()
        self._running: _Running | None = None
        self._counts: Counter[str] = Counter()
        self._jobs_started = 0
        self._seconds_per_job = 1.0  # running average, for Retry-After
        self._thread = threading.Thread(target=self._serve, name="noisecraft-worker", daemon=True)

    # -- the request side (event loop) ---------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def cancel_all(self) -> None:
        """Cancel the running job and answer every queued one 503 (shutting down); call on the loop."""
        running = self._running
        if running is not None:
            running.job.cancel()
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel()
                job.emit("error", {"status": 503, "detail": "the server is shutting down"})

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel every job and end the thread."""
        self.cancel_all()
        self._queue.put(None)
        self._thread.join(timeout)

    def reserve(self) -> None:
        """Hold a queue slot for a job still being prepared; QueueFull when every slot is taken."""
        with self._lock:
            if self._queue.qsize() + self._reserved >= self.queue_size:
                raise QueueFull(self.retry_after())
            self._reserved += 1

    def release(self) -> None:
        """Give back a slot ``reserve`` held (the request failed before its job was queued)."""
        with self._lock:
            self._reserved -= 1

    def submit(self, job: Job, reserved: bool = False) -> int:
        """Queue a job in a slot it ``reserve``d (or takes now); its position (1 = next); QueueFull."""
        if not reserved:
            self.reserve()
        with self._lock:
            self._reserved -= 1
            self._queue.put_nowait(job)
            return self._queue.qsize()

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue's length times the average job time."""
        return max(1, math.ceil(self._seconds_per_job * (self._queue.qsize() + 1)))

    def interrupt(self, allowed: Callable[[Job], bool]) -> bool:
        """Stop the running job at its next step if ``allowed(job)``; it still answers with what it has."""
        running = self._running
        if running is None or not allowed(running.job):
            return False
        running.job.interrupted.set()
        return True

    def running(self) -> _Running | None:
        return self._running

    def queued(self) -> int:
        return self._queue.qsize()

    def counts(self) -> dict[str, int]:
        return {k: self._counts[k] for k in ("completed", "cancelled", "interrupted", "failed")}

    # -- the worker thread --------------------------------------------------------------------

    def _serve(self) -> None:
        while (job := self._queue.get()) is not None:
            if job.cancelled.is_set():  # the client left while the job waited
                self._counts["cancelled"] += 1
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        """Run every batch, then ``finish``; any failure becomes an error event, never a dead worker."""
        self._jobs_started += 1
        running = self._running = _Running(job, self._jobs_started, time.monotonic())
        outcome = "completed"
        try:
            images: list[Image.Image] = []
            for i, batch in enumerate(job.batches):
                running.batch, running.step, running.total, running.denoised = i, 0, 0, None
                try:
                    images += batch(partial(self._on_step, running))
                except _Interrupted:
                    outcome = "interrupted"
                    if running.denoised is not None:  # the batch's latest guess of the clean image
                        images += to_pil(running.denoised)
                    break
            job.emit("done", job.finish(images, outcome == "interrupted"))
        except _Cancelled:
            outcome = "cancelled"
            job.emit("cancelled")
        except ValueError as err:  # settings the request checks could not see (the Pipeline's own)
            outcome = "failed"
            job.emit("error", {"status": 422, "detail": str(err)})
        except Exception as err:  # a bug or an exhausted resource: report it and keep serving
            outcome = "failed"
            log.exception("job %s failed", job.id)
            job.emit("error", {"status": 500, "detail": f"generation failed: {type(err).__name__}: {err}"})
        finally:
            self._counts[outcome] += 1
            elapsed = time.monotonic() - running.started
            self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * elapsed
            self._running = None

    def _on_step(self, running: _Running, step: Step) -> None:
        """The sampler's callback: record progress, send a preview, stop if asked to."""
        running.step, running.total, running.denoised = step.index + 1, step.total, step.denoised
        job = running.job
        if job.cancelled.is_set():
            raise _Cancelled
        if job.interrupted.is_set():
            raise _Interrupted
        if job.previews:
            images = to_pil(step.denoised)  # x̂0 of every image in the batch, side by side
            images = [job.paint(image) for image in images] if job.paint is not None else images
            preview = images[0] if len(images) == 1 else make_grid(images, pad=1)
            job.emit(
                "step",
                {
                    "index": step.index,
                    "total": step.total or job.steps,
                    "sigma": step.sigma,
                    "sigma_next": step.sigma_next,
                    "batch": running.batch,
                    "batches": len(job.batches),
                    "preview": "data:image/png;base64," + encode_png(preview),
                },
            )


async def events_until_end(job: Job) -> AsyncIterator[tuple[str, Any]]:
    """The job's events up to its end; leaving early (a closed stream) cancels the job."""
    try:
        while True:
            kind, data = await job.events.get()
            yield kind, data
            if kind in END_EVENTS:
                return
    finally:
        job.cancel()  # no effect on a finished job


async def job_events(job: Job, request: Request, poll: float = 0.25) -> AsyncIterator[tuple[str, Any]]:
    """``events_until_end``, checking every ``poll`` seconds whether the client left (then cancelled).

    For plain JSON answers, which, unlike an event stream, hear of a departed client only by asking.
    """
    try:
        while True:
            try:
                kind, data = await asyncio.wait_for(job.events.get(), poll)
            except asyncio.TimeoutError:  # noqa: UP041 (not the builtin TimeoutError before Python 3.11)
                if await request.is_disconnected():
                    return
                continue
            yield kind, data
            if kind in END_EVENTS:
                return
    finally:
        job.cancel()  # no effect on a finished job
