"""The training loop: micro-batches → loss → clipped AdamW step → EMA, with logging and checkpoints.

Exactness rules that make resume bit-identical and DDP equal to one process:
- every random number of a step (σ, noise, caption dropout) is drawn for the whole global batch
  from one CPU generator, identically in every process, which then keeps its own slice;
- the data position and the generator state are saved; the learning rate is a function of the step;
- a step with a non-finite loss or gradient changes nothing but the counters (and the data position).
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import IterableDataset
from tqdm import tqdm

from ..devices import wide_float
from ..model.upscale import check_factor, training_input
from .build import draw_sigma, learning_rate
from .checkpoint import list_checkpoints
from .config import TrainConfig
from .data import Dataset
from .distill import ConsistencyObjective
from .distributed import all_reduce, barrier, shutdown_distributed
from .interrupt import GracefulInterrupt
from .metrics import MetricsLogger
from .samples import write_samples
from .trainer import Trainer, TrainState


class TrainingDiverged(RuntimeError):
    """Too many non-finite losses in a row: the run stops instead of spinning on NaN."""


@dataclass
class StepResult:
    loss: float  # mean over the global batch (NaN/inf when skipped)
    grad_norm: float
    lr: float
    finite: bool
    stop: bool  # some process got Ctrl-C / SIGTERM


def micro_batch(t: Trainer) -> tuple[Tensor, Tensor, Tensor, object]:
    """This process's share of the next global micro-batch: (x0, σ, ε, captions or Conditioning)."""
    c, rank = t.config, t.dist.rank
    x0, captions = t.batches.take(t.state.batches)
    t.state.batches += 1
    x0 = x0.to(t.device, t.dtype, non_blocking=True)  # pinned on CUDA: the copy overlaps
    x0 = t.latent.encode(x0)  # [b, ...] in the space the model trains in
    n, b = t.batches.batch_size, x0.shape[0]  # the global micro-batch, this process's share
    mine = slice(rank * b, (rank + 1) * b)
    sigma = draw_sigma(c.schedule, n, t.generator)[mine]  # [b]
    noise = torch.randn((n, *x0.shape[1:]), generator=t.generator)[mine]  # [b, ...]
    cond = None
    if c.text.kind != "none":
        drop = (torch.rand(n, generator=t.generator) < c.text.cond_dropout)[mine]  # [b]
        captions = ["" if d else caption for caption, d in zip(captions, drop.tolist())]
        cond = captions if t.frozen_text is None else t.frozen_text(captions).to(t.device, t.dtype)
    if c.model.upscale_from:  # an upscaler sees the image shrunk, noised and enlarged back beside x
        factor = check_factor(x0.shape[-1], c.model.upscale_from)
        low = training_input(x0, factor, c.model.upscale_noise, t.generator, n, mine)  # [b, C, H, W]
        cond = cond.with_image(low)
    return x0, sigma.to(t.device, t.dtype), noise.to(t.device, t.dtype), cond


def train_step(t: Trainer, stop_requested: bool) -> StepResult:
    """One optimizer step over grad_accum micro-batches; skipped if the loss or gradient is not finite."""
    accum = t.config.optim.grad_accum
    wide = wide_float(t.device)  # float64 sums, but MPS has no float64
    total = torch.zeros((), dtype=wide, device=t.device)
    for i in range(accum):
        x0, sigma, noise, cond = micro_batch(t)
        last = i == accum - 1
        sync = nullcontext() if last or not t.dist.enabled else t.model.no_sync()
        with sync:
            with t.autocast():
                loss = t.model(x0, sigma, noise, cond).float().mean()
            (loss / accum).backward()
        total += loss.detach().to(wide) / accum
    clip = t.config.optim.grad_clip or math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(t.params, clip).to(wide)
    flag = torch.tensor(float(stop_requested), dtype=wide, device=t.device)
    loss_value, norm, stop = all_reduce(torch.stack([total, grad_norm, flag])).tolist()
    finite = math.isfinite(loss_value) and math.isfinite(norm)
    lr = learning_rate(t.state.step, t.config)
    if finite:
        for group in t.optimizer.param_groups:
            group["lr"] = lr
        t.optimizer.step()
        if isinstance(t.objective, ConsistencyObjective):
            t.objective.update_target()
        if t.ema is not None:
            t.ema.update(t.objective, t.state.step + 1)
        t.state.nonfinite_streak = 0
    else:
        t.state.nonfinite_total += 1
        t.state.nonfinite_streak += 1
    t.optimizer.zero_grad(set_to_none=True)
    t.state.step += 1
    return StepResult(loss_value, norm, lr, finite, stop > 0)


class Reporter:
    """Progress bar, metrics lines and sample previews; silent outside rank 0."""

    def __init__(self, t: Trainer, end: int):
        self.t, self.main = t, t.dist.is_main
        self.metrics = MetricsLogger(t.out, t.config.log.tensorboard, t.state.step) if self.main else None
        self.bar = tqdm(
            total=end, initial=t.state.step, unit="step", dynamic_ncols=True,
            disable=not (self.main and t.config.log.progress),
        )  # fmt: skip
        self._reset_window()

    def _reset_window(self) -> None:
        self.losses, self.steps, self.seconds = [], 0, 0.0

    def step(self, result: StepResult, seconds: float) -> None:
        """Account for one finished step that took ``seconds`` (checkpoints and samples not included)."""
        t, step = self.t, self.t.state.step
        self.bar.update(1)
        self.steps, self.seconds = self.steps + 1, self.seconds + seconds
        if result.finite:
            self.losses.append(result.loss)
        elif self.main:
            tqdm.write(f"step {step}: non-finite loss ({result.loss}), step skipped", file=sys.stderr)
            self.metrics.log(
                step, {"nonfinite_loss": result.loss, "nonfinite_total": t.state.nonfinite_total}
            )
        if step % t.config.log.every == 0 and self.losses and self.main:
            values = {
                "loss": sum(self.losses) / len(self.losses),
                "grad_norm": result.grad_norm,
                "lr": result.lr,
                "images_per_s": self.steps * t.config.optim.batch_size / self.seconds,
                "nonfinite_total": t.state.nonfinite_total,
                "epoch": t.batches.epochs(t.state.batches),
            }
            self.metrics.log(step, values)
            self.bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{values['images_per_s']:.0f}")
            self._reset_window()

    def samples(self) -> Path | None:
        t = self.t
        if not self.main:
            return None
        path = t.out / "samples" / f"step-{t.state.step:08d}.png"
        shape = tuple(t.latent.encode(t.batches.example()[None].to(t.device, t.dtype)).shape[1:])
        return write_samples(t.averaged, t.frozen_text, t.config.sampling, t.latent, shape, t.device, path)

    def close(self) -> None:
        self.bar.close()
        if self.metrics is not None:
            self.metrics.close()


def _after_step(t: Trainer, reporter: Reporter, result: StepResult) -> None:
    """Cadence: checkpoint, samples, divergence and interrupt handling after each step."""
    step, c = t.state.step, t.config
    if result.stop:
        t.save()
        raise KeyboardInterrupt
    if t.state.nonfinite_streak >= c.optim.max_nonfinite:
        saved = list_checkpoints(t.checkpoints)
        where = f"{saved[-1]} holds the newest finite weights" if saved else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"training stopped at step {step}: {t.state.nonfinite_streak} non-finite losses in a row "
            f"({t.state.nonfinite_total} in all); {where}. "
            "Lower optim.lr, set optim.grad_clip, or check the data for NaN."
        )
    if step % c.checkpoint.every == 0:
        t.save()
    if c.sampling.every and step % c.sampling.every == 0:
        reporter.samples()
        barrier()


def run(t: Trainer, stop_after: int | None = None) -> TrainState:
    """Train until config.steps (or ``stop_after`` more steps), then checkpoint; export at the very end."""
    c = t.config
    end = c.steps if stop_after is None else min(c.steps, t.state.step + stop_after)
    reporter = Reporter(t, end)
    try:
        with GracefulInterrupt(quiet=not t.dist.is_main) as interrupt:
            while t.state.step < end:
                start = time.perf_counter()
                result = train_step(t, interrupt.requested)
                t.state.train_seconds += time.perf_counter() - start
                reporter.step(result, time.perf_counter() - start)
                _after_step(t, reporter, result)
        if t.state.step % c.checkpoint.every:  # the last step was not a cadence step
            t.save()
        if t.state.step >= c.steps and t.dist.is_main:
            if c.sampling.every and c.steps % c.sampling.every:
                reporter.samples()
            t.export()
        barrier()
    finally:
        t.batches.close()
        reporter.close()
    return t.state


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    dataset: Dataset | IterableDataset | None = None,
) -> Trainer:
    """Build a Trainer (resuming from out_dir's newest checkpoint if asked) and run it; returns it."""
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    trainer = None
    try:
        trainer = Trainer(config, out_dir, resume=resume, dataset=dataset)
        run(trainer, stop_after)
        return trainer
    finally:
        torch.set_num_threads(threads)
        if trainer is not None:
            trainer.model = trainer.objective  # the DDP wrapper goes before its group (shutdown_distributed)
        shutdown_distributed()
