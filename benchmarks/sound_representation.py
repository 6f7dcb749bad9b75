"""Spectrogram or waveform: which representation of sound gives more oracle adherence per CPU-hour.

    .venv/bin/python benchmarks/sound_representation.py --spectrogram runs/rep-spec/model \\
        --waveform runs/rep-wave/model --num 200 --threads 2

The two exports come from ``noisecraft train`` on the same clips, captions, text encoder, optimiser
and steps: ``configs/tones64.toml`` (a 2-D U-Net over 64×64 log-mel images; sound by Griffin-Lim)
and ``configs/tones_wave.toml`` (a 1-D U-Net over the 8,192 samples; ``nets.wave_unet``). Both are
sampled with the spectrogram model's sampler, steps and guidance, with the σ range scaled by the
ratio of their σ_data (EDM's σ are relative to the data's scale), and their clips are read by the
tones oracle on the same captions (clip i from seed + i). Columns: training steps and minutes (one
thread each, from training.json), the share of clips right in every fact on held-out and on
training-split captions, the per-fact rates on held-out captions, and seconds per clip (sampling, and
Griffin-Lim for the spectrogram).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import add_common_arguments, append_results, markdown_table, setup, time_interleaved
from sound_quality import FACTS

from noisecraft.audio import CLIP_SAMPLES
from noisecraft.components import load_component
from noisecraft.data.tones import WAVE_SAMPLES
from noisecraft.evaluation.evaluate import evaluate
from noisecraft.evaluation.sound import heldout_items, waveform_scores
from noisecraft.model.options import SamplingOptions
from noisecraft.model.sampling import encode_prompts, sample
from noisecraft.model.settings import build_denoiser
from noisecraft.pipeline import Pipeline
from noisecraft.sound_files import clip_waveform

SPLITS = ("heldout", "train")


def spectrogram_scores(pipe: Pipeline, num: int, seed: int, split: str) -> dict:
    """The oracle's figures of a spectrogram model on ``num`` captions of ``split`` (after Griffin-Lim)."""
    out = evaluate(
        pipe, "tones", num, ["adherence"], seed=seed, dataset_options={"split": split}, progress=False
    )
    return {"accuracy": out["adherence"]["oracle_accuracy"], "facts": out["adherence"]["oracle_facts"]}


class WaveformModel:
    """A ``tones_wave`` export, sampled with a spectrogram model's sampler, steps and guidance, its σ
    range scaled by the ratio of the two σ_data."""

    def __init__(self, folder: Path, like: Pipeline):
        record = json.loads((folder / "training.json").read_text())
        self.net = load_component(folder / "net").eval()
        self.encoder = load_component(folder / "text_encoder").eval()
        sigma_data = float(record["sigma_data"])
        self.denoiser = build_denoiser(self.net, record["precond"], sigma_data, "linear", 1000)
        c, ratio = like.config, sigma_data / like.config.sigma_data
        scaled = SamplingOptions(sigma_min=c.sigma_min * ratio, sigma_max=c.sigma_max * ratio)
        self.options = scaled.resolve(c)

    def clips(self, captions: list[str], seed: int, batch: int = 25) -> list[torch.Tensor]:
        """One sound [CLIP_SAMPLES] in [-1, 1] per caption, clip i from seed + i."""
        out = []
        for start in range(0, len(captions), batch):
            chunk = captions[start : start + batch]
            cond = encode_prompts(self.encoder, chunk)
            uncond = encode_prompts(self.encoder, [""] * len(chunk))
            seeds = range(seed + start, seed + start + len(chunk))
            x = sample(self.denoiser, (1, WAVE_SAMPLES), self.options, list(seeds), cond, uncond)  # [b, 1, N]
            out += list(x[:, 0, :CLIP_SAMPLES].clamp(-1, 1))
        return out

    def scores(self, num: int, seed: int, split: str) -> dict:
        """The oracle's figures on the captions ``spectrogram_scores`` uses."""
        _, captions = heldout_items(num, seed, {"split": split})
        return waveform_scores(self.clips(captions, seed), captions)


def clip_seconds(pipe: Pipeline, wave: WaveformModel, args: argparse.Namespace) -> dict[str, float]:
    """Median seconds for one 1-s clip of each, interleaved: the spectrogram sampled and turned into
    sound by Griffin-Lim, the waveform sampled."""
    prompt = "three loud drum hits"

    def spectrogram() -> None:
        (image,) = pipe.generate(prompt, seed=1)
        clip_waveform(image, 1, pipe.config.audio)

    timings = time_interleaved(
        {"spectrogram": spectrogram, "waveform": lambda: wave.clips([prompt], 1)}, args.repeats, args.warmup
    )
    return {name: t.median for name, t in timings.items()}


def training_cost(model: Path) -> tuple[int, float]:
    """(steps, minutes of training) from an export's training.json."""
    record = json.loads((model / "training.json").read_text())
    return int(record["step"]), float(record["train_seconds"]) / 60


def row(name: str, model: Path, scores: dict[str, dict], seconds: float) -> list[object]:
    steps, minutes = training_cost(model)
    facts = scores["heldout"]["facts"]
    per_fact = " ".join(f"{f} {100 * facts[f]:.0f}" for f in FACTS if f in facts)
    return [
        name, str(model), steps, f"{minutes:.0f}", f"{100 * scores['heldout']['accuracy']:.1f}",
        f"{100 * scores['train']['accuracy']:.1f}", per_fact, f"{seconds:.2f}",
    ]  # fmt: skip


def main() -> None:
    """Score both exports on held-out and training-split captions; print the table and append it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spectrogram", type=Path, required=True, help="a tones64-style model folder")
    parser.add_argument("--waveform", type=Path, required=True, help="a tones_wave model folder")
    parser.add_argument(
        "--num", type=int, default=200, help="captions per split, one clip each (default 200)"
    )
    parser.add_argument("--seed", type=int, default=0, help="clip i uses seed + i (default 0)")
    add_common_arguments(parser)
    args = parser.parse_args()
    setup(args)
    pipe = Pipeline.load(str(args.spectrogram))
    wave = WaveformModel(args.waveform, pipe)
    scorers = {"spectrogram": lambda split: spectrogram_scores(pipe, args.num, args.seed, split),
               "waveform": lambda split: wave.scores(args.num, args.seed, split)}  # fmt: skip
    seconds = clip_seconds(pipe, wave, args)
    rows = []
    for name, model in (("spectrogram", args.spectrogram), ("waveform", args.waveform)):
        scores = {}
        for split in SPLITS:
            scores[split] = scorers[name](split)
            print(f"{name} {split}: {scores[split]['accuracy']:.3f}", flush=True)
        rows.append(row(name, model, scores, seconds[name]))
    header = ["representation", "model", "steps", "train min", "held-out %", "training-split %",
              "held-out per fact %", "s per clip"]  # fmt: skip
    table = markdown_table(header, rows)
    print(table)
    if not args.no_append:
        append_results("Sound: spectrogram against waveform at equal training (tones)", table, args.note)


if __name__ == "__main__":
    main()
