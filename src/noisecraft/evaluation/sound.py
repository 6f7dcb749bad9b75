"""A text-to-sound model on ``tones``: oracle adherence and a Fréchet distance, on held-out captions.

Protocol. Prompts are the captions of ``num`` seeded-random items of the **held-out** split (each holds
a low bell or a high square wave, pairs never drawn in training); clip i is generated from seed + i
and quantised to 8 bits like a saved PNG (``--data split=train``: items of the training split instead).
One generated set serves every score:

- adherence: each spectrogram is turned into sound (``audio.image_to_waveform``, Griffin-Lim seeded
  with seed + i) and ``data.tones_oracle`` reads it back: ``oracle_accuracy`` is the share of clips
  right in every fact of their caption, ``oracle_facts`` the rate per fact (parts and loudness over
  all clips; kind, pitch, chord, direction and count over the clips with the right number of parts).
  The **ceiling** is the same read-back of the real renders of those items through the same
  spectrogram round trip (``ceiling_accuracy``, 0.985-1.0 over 200 clips): Griffin-Lim loses what a
  perfect generator would lose too.
- FID / KID / precision-recall compare the generated spectrograms with the real renders of the same
  captions (paired sets of ``num`` each, so nothing is cached); they play the notes the model trained on
  (``notes`` from its ``training.json``; ``--data notes=…`` over it). ``fid_floor`` is the FID of ``num``
  other held-out renders against them: what a perfect generator scores at this sample size.
  The default feature space is the shipped tones classifier's (``weights/tones``): no audio network
  (VGGish, PANNs) can be downloaded here, and one trained on the procedural clips reads what the
  captions state — loudness, number of sounds, each sound's timbre and register, chords, hits —
  from the spectrogram itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from torch import Tensor
from tqdm.auto import tqdm

from ..audio import SPECTROGRAM, SpectrogramFormat, image_to_waveform, reformat
from ..data.tones import DEFAULT_NOTES
from ..data.tones_oracle import fact_checks, parse_caption, read_clip
from ..model.folder import training_data
from .features import make_features, to_8bit
from .reference import build_dataset, dataset_images, extract_features

if TYPE_CHECKING:
    from ..pipeline import Pipeline

HELDOUT = "heldout"
# The training options that decide how a real clip sounds, so the reference plays what the model learnt.
REFERENCE_OPTIONS = ("notes",)
WHY_TONES_FEATURES = (
    "the shipped tones classifier's 128-d penultimate features (evaluation/weights/tones/CARD.md): no audio "
    "network can be downloaded, and this one reads every fact a caption states from the spectrogram"
)


def oracle_scores(
    images: Tensor,
    captions: list[str],
    seed: int = 0,
    progress: bool = False,
    fmt: SpectrogramFormat = SPECTROGRAM,
) -> dict:
    """Spectrograms [B, 1, 64, 64] in [-1, 1] of format ``fmt`` → Griffin-Lim (seed + i) → the oracle
    against each caption (``waveform_scores``)."""
    if len(images) != len(captions) or not captions:
        raise ValueError(f"need one caption per clip, got {len(captions)} for {len(images)}")
    waves = (image_to_waveform(images[i : i + 1], seed=seed + i, fmt=fmt)[0] for i in range(len(images)))
    return waveform_scores(waves, captions, progress)


def waveform_scores(waves: Iterable[Tensor], captions: list[str], progress: bool = False) -> dict:
    """Sounds [CLIP_SAMPLES] (an iterable, one per caption) → the oracle against each caption:
    ``{"accuracy": share right in every fact, "facts": {fact: share right}}``."""
    if not captions:
        raise ValueError("need at least one clip and caption")
    right: dict[str, list[bool]] = {}
    every = []
    bar = tqdm(waves, total=len(captions), desc="oracle", unit="clip", disable=not progress, leave=False)
    for wave, caption in zip(bar, captions, strict=True):
        checks = fact_checks(read_clip(wave), parse_caption(caption))
        every.append(all(checks.values()))
        for fact, ok in checks.items():
            right.setdefault(fact, []).append(ok)
    facts = {fact: sum(oks) / len(oks) for fact, oks in right.items()}
    return {"accuracy": sum(every) / len(every), "facts": facts}


def heldout_items(num: int, seed: int = 0, options: dict | None = None) -> tuple[Tensor, list[str]]:
    """Real spectrograms [num, 1, 64, 64] (on the 8-bit grid) and captions of ``num`` seeded-random
    held-out items; more than the split holds cycle through it."""
    data = build_dataset("tones", 64, HELDOUT, options)
    images, captions = dataset_images(data, min(num, len(data)), seed)
    repeat = [i % len(captions) for i in range(num)]
    return to_8bit(images[repeat]) / 127.5 - 1, [captions[i] for i in repeat]


def trained_options(pipeline: Pipeline) -> dict:
    """The REFERENCE_OPTIONS of the tones recipe a model trained on (its folder's ``training.json``);
    {} for a model without one."""
    folder = pipeline.origin if pipeline.origin is not None and pipeline.origin.is_dir() else None
    data = (training_data(folder) if folder is not None else None) or {}
    options = data.get("options") if data.get("name") == "tones" else None
    return {k: options[k] for k in REFERENCE_OPTIONS if k in options} if isinstance(options, dict) else {}


def tones_scores(pipeline: Pipeline, metrics: Sequence[str], features: str, num: int, *, seed: int,
                 batch_size: int, options: dict | None, progress: bool, **sample) -> dict:  # fmt: skip
    """Every requested score of a tones model (see the module docstring), as JSON-ready fields."""
    from .evaluate import distribution_scores, generate_images

    fmt = pipeline.config.audio or SPECTROGRAM  # the real renders are drawn in the model's own format
    axis = {"f_min": fmt.f_min, "mel_break_hz": fmt.mel_break_hz}
    options = {**trained_options(pipeline), **(options or {}), **axis}
    distribution = bool({"fid", "kid", "pr"} & set(metrics))
    real, captions = heldout_items(2 * num if distribution else num, seed, options)  # the first num: prompts
    fake = generate_images(
        pipeline, captions[:num], seed=seed, batch_size=batch_size, progress=progress, **sample
    )
    split = options.get("split", HELDOUT)  # --data split=train: captions of the training distribution
    out: dict = {"prompts": f"{split} captions", "notes": options.get("notes", DEFAULT_NOTES)}
    if distribution:
        extractor = make_features(features, "tones")
        # The classifier reads the default format: both sets are re-banded into it alike (``reformat``).
        reals = extract_features(
            extractor, reformat(real, fmt, SPECTROGRAM), desc="features (real)", progress=progress
        )
        fakes = extract_features(
            extractor, reformat(fake, fmt, SPECTROGRAM), desc="features", progress=progress
        )
        out.update(features=extractor.name, ref_num=num, reference="real renders of the same captions")
        if features == "domain":
            out["features_about"] = WHY_TONES_FEATURES
        out.update(distribution_scores(reals[:num], fakes, metrics, seed))
        if "fid" in metrics:  # what a perfect generator would score at this size: other real renders
            out["fid_floor"] = distribution_scores(reals[:num], reals[num:], ["fid"], seed)["fid"]
    real, captions = real[:num], captions[:num]
    if "adherence" in metrics:
        model = oracle_scores(fake, captions, seed, progress, fmt)
        ceiling = oracle_scores(real, captions, seed, progress, fmt)
        out["adherence"] = {
            "oracle_accuracy": model["accuracy"], "oracle_prompts": split, "oracle_facts": model["facts"],
            "ceiling_accuracy": ceiling["accuracy"], "ceiling_facts": ceiling["facts"],
        }  # fmt: skip
    return out
