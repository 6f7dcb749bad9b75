"""The one sampling function: (denoiser, shape, options, seeds, conditioning) → samples.

``Pipeline`` (generate, img2img, inpaint), training previews and evaluation all sample through
``sample``, so a preview is exactly what the exported model generates for the same prompt and seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..conditioning import Conditioning
from ..denoisers import Denoiser, FixedBatch
from ..guidance import ClassifierFreeGuidance, Control, ControlWindow
from ..nets.feature_cache import StepCounter, reuse_features
from ..noise import SeededNoise
from ..samplers import Callback, get_sampler
from ..text.tokenizer import check_prompts
from .options import MODEL_DEFAULTS, SamplingOptions
from .schedule import schedule_sigmas

# The network runs on chunks of this many samples (denoisers.FixedBatch): 4 covers one image with its
# unguided twin (padded) and keeps 4 guided images at 2 calls a step.
BATCH_ROWS = 4


def encode_prompts(text_encoder: nn.Module | None, prompts: list[str]) -> Conditioning | None:
    """The Conditioning of ``prompts`` (None for an unconditional model).

    Each distinct prompt is encoded alone and padded to the encoder's full context: an encoder's and
    a network's rounding depend on the shapes they run at (batch, token count), and a prompt must
    condition its images the same in any batch.
    """
    if text_encoder is None:
        return None
    alone = {p: text_encoder([p]) for p in dict.fromkeys(check_prompts(prompts))}
    return Conditioning.cat([alone[p] for p in prompts], length=int(text_encoder.max_length))


class KeepKnown(nn.Module):
    """Inpainting as a Denoiser: the known region's x̂0 is the known image, so every sampler keeps it."""

    def __init__(self, denoiser: Denoiser, known: Tensor, keep: Tensor):
        super().__init__()
        self.denoiser, self.known, self.keep = denoiser, known, keep  # [B, C, ...], [B, 1, ...]

    def forward(self, x: Tensor, sigma: Tensor, cond: Conditioning | None = None) -> Tensor:
        return self.keep * self.known + (1 - self.keep) * self.denoiser(x, sigma, cond)


class EvaluationLimit(ValueError):
    """Sampling needed more network evaluations than it was allowed (``sample``'s max_evaluations)."""


class EvaluationBudget:
    """A Denoiser allowing ``limit`` calls; the next raises EvaluationLimit, which ends the sampler."""

    def __init__(self, denoiser: Denoiser, limit: int, sampler: str):
        self.denoiser, self.limit, self.sampler, self.calls = denoiser, limit, sampler, 0

    def __call__(self, x: Tensor, sigma: Tensor, cond: Conditioning | None = None) -> Tensor:
        if self.calls >= self.limit:
            raise EvaluationLimit(
                f"sampler {self.sampler} needed more than {self.limit} network evaluations, this request's "
                "limit; use a fixed-step sampler, fewer steps or a lower guidance scale"
            )
        self.calls += 1
        return self.denoiser(x, sigma, cond)
class NonFiniteError(ValueError):
    """Sampling met NaN or infinity; the message says where (an all-black image is never returned)."""


class CheckFinite(nn.Module):
    """A Denoiser that refuses to hand NaN or infinity to the sampler, naming the σ where it arose."""

    def __init__(self, denoiser: Denoiser):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x: Tensor, sigma: Tensor, cond: Conditioning | None = None) -> Tensor:
        out = self.denoiser(x, sigma, cond)
        if not torch.isfinite(out).all():
            where = "the sample" if not torch.isfinite(x).all() else "the model's prediction"
            raise NonFiniteError(
                f"{where} at σ = {float(torch.as_tensor(sigma).max()):.4g} holds NaN or infinity "
                "(damaged weights, or settings beyond what this model can take)"
            )
        return out


def guided(
    denoiser: Denoiser,
    options: SamplingOptions,
    cond: Conditioning | None,
    uncond: Conditioning | None,
    rows: int = BATCH_ROWS,
) -> Denoiser:
    """The denoiser run in fixed chunks, under classifier-free guidance when there is text to guide by."""
    fixed = FixedBatch(denoiser, rows)  # a seed's image whatever its batch
    if cond is None or uncond is None or options.guidance == 1.0:
        return fixed
    interval = options.guidance_interval or (0.0, float("inf"))
    return ClassifierFreeGuidance(fixed, options.guidance, uncond, options.guidance_rescale, interval)


def _check_resolved(options: SamplingOptions) -> None:
    unresolved = [key for key in MODEL_DEFAULTS if getattr(options, key) is None]
    if unresolved:
        raise ValueError(f"sample needs resolved options (options.resolve(settings)); {unresolved} are None")


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    shape: Sequence[int],
    options: SamplingOptions,
    seeds: Sequence[int],
    cond: Conditioning | None = None,
    uncond: Conditioning | None = None,
    *,
    callback: Callback | None = None,
    init: Tensor | None = None,
    keep: Tensor | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    rows: int = BATCH_ROWS,
    max_evaluations: int | None = None,
    controls: Sequence[Control] = (),
) -> Tensor:
    """len(seeds) samples of one example ``shape``, [B, *shape], sample i drawn from seed i alone.

    ``options`` must be resolved (no None left). ``init`` [B, *shape]: start from it at the σ of
    ``options.strength`` (SDEdit, Meng et al. 2022); with ``keep`` [B, 1, ...] (1 = known) it is
    inpainting instead, and the known part of ``init`` is kept exactly. The starting noise is drawn
    on the CPU in float32 and then moved to ``device`` and ``dtype`` (the sampler's precision; the σ
    schedule is built in float64 on the CPU), so a seed starts from the same noise on every device.
    The denoiser runs on chunks of ``rows`` samples (``FixedBatch``). ``max_evaluations`` bounds the
    sampler's calls of the (guided) denoiser, whatever the sampler: one more raises EvaluationLimit
    (a ValueError). ``controls``: control branches with their maps, scales and windows (fractions of
    the ``steps`` steps; guidance.ControlWindow).
    """
    _check_resolved(options)
    sample_fn = get_sampler(options.sampler)
    noise = SeededNoise(seeds)
    x = noise.randn(shape).to(device, dtype)  # [B, *shape]
    init, keep = (None if t is None else t.to(device, dtype) for t in (init, keep))
    steps = options.steps
    start = min(steps, round(steps * (1 - options.strength))) if init is not None and keep is None else 0
    if start == steps:  # strength 0: nothing to do
        return init
    o = options
    net_denoiser = denoiser  # the model's own, whose U-Net a deep_cache applies to
    table = getattr(denoiser, "sigma_table", None)  # a discrete model's σ per timestep, if any
    sigmas = schedule_sigmas(o.schedule, steps, o.sigma_min, o.sigma_max, o.rho, dtype, table)
    if controls:
        denoiser = ControlWindow(denoiser, controls, sigmas)
    sigmas = sigmas[start:]
    x = x * sigmas[0] if start == 0 else init + x * sigmas[0]
    with reuse_features(net_denoiser, options.deep_cache) as cache:
        denoiser = CheckFinite(guided(denoiser, options, cond, uncond, rows))
        if keep is not None:
            denoiser = KeepKnown(denoiser, init, keep)
            x = x + keep * init
        if max_evaluations is not None:
            denoiser = EvaluationBudget(denoiser, max_evaluations, options.sampler)
        if cache is not None:
            denoiser = StepCounter(denoiser, cache)
        out = sample_fn(denoiser, x, sigmas, cond, generator=noise, callback=callback)
    if not torch.isfinite(out).all():
        raise NonFiniteError(f"the {options.sampler} sampler ended in NaN or infinity")
    return out if keep is None else keep * init + (1 - keep) * out
