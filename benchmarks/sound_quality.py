"""The figures of text-to-sound models on ``tones``: oracle adherence against its ceiling, and FID in
the tones classifier's features against its floor (``noisecraft.evaluation.sound``).

    .venv/bin/python benchmarks/sound_quality.py --model runs/tones/model [--model M2 ...] [--num 100]

Each model is scored by ``evaluate(pipeline, "tones", num)`` on the same held-out captions and seeds
(clip i from seed + i), so the rows compare. Columns: the training step of the export (its
training.json), FID against the real renders of the same captions and the floor (other real renders
against them, what a perfect generator scores at this ``--num``), the share of clips the oracle reads
right in every fact after Griffin-Lim, the ceiling (real renders through the same round trip), and the
per-fact rates.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import add_common_arguments, append_results, markdown_table, setup, time_interleaved

from noisecraft.evaluation.evaluate import evaluate
from noisecraft.pipeline import Pipeline

FACTS = ("parts", "loudness", "kind", "pitch", "chord", "direction", "count")


def training_step(model: str) -> str:
    """The step of a ``noisecraft train`` export, from its training.json; '?' where there is none."""
    try:
        return str(json.loads((Path(model) / "training.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return "?"


def row(model: str, results: dict) -> list[object]:
    """One table row: model, step, n, FID and floor, oracle and ceiling (percent), per-fact rates."""
    a = results["adherence"]
    facts = " ".join(f"{f} {100 * a['oracle_facts'][f]:.0f}" for f in FACTS if f in a["oracle_facts"])
    return [
        model, training_step(model), results["num_samples"], f"{results['fid']:.1f}",
        f"{results['fid_floor']:.1f}", f"{100 * a['oracle_accuracy']:.1f}",
        f"{100 * a['ceiling_accuracy']:.1f}", facts,
    ]  # fmt: skip


def clip_times(args: argparse.Namespace) -> str:
    """Seconds for one clip at the model's defaults, process started and warmed: the spectrogram
    (``Pipeline.generate``), then Griffin-Lim and the WAV bytes (``sound_files``), medians of repeats."""
    from noisecraft.sound_files import clip_waveform, wav_bytes

    lines = []
    for model in args.model:
        pipe = Pipeline.load(model)
        fmt = pipe.config.audio

        def clip(pipe: Pipeline = pipe, fmt=fmt) -> None:
            (image,) = pipe.generate("three loud drum hits", seed=1)
            wav_bytes(clip_waveform(image, 1, fmt), fmt.sample_rate)

        timing = time_interleaved({"clip": clip}, args.repeats, args.warmup)["clip"]
        lines.append(
            f"One 1-s clip from `{model}` ({pipe.config.steps} steps of {pipe.config.sampler}, guidance "
            f"{pipe.config.guidance}, Griffin-Lim {fmt.griffin_lim_iters} iterations): median "
            f"{timing.median:.2f} s ({timing.spread} s) on {args.threads} thread(s), {args.repeats} repeats."
        )
    return "\n".join(lines)


def main() -> None:
    """Score each --model on tones, print the table and append it to RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="a tones model folder (repeatable)")
    parser.add_argument("--num", type=int, default=100, help="held-out captions, one clip each (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="clip i uses seed + i (default 0)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    parser.add_argument("--guidance", type=float, default=None, help="default: the model's")
    parser.add_argument("--json", default=None, help="also write every result to this JSON file")
    parser.add_argument(
        "--clip-time", action="store_true",
        help="also time one 1-s clip as `generate` makes it (sampling + Griffin-Lim + WAV), per model",
    )  # fmt: skip
    add_common_arguments(parser)
    args = parser.parse_args()
    setup(args)
    rows, results = [], []
    for model in args.model:
        out = evaluate(Pipeline.load(model), "tones", args.num, ["fid", "adherence"], seed=args.seed,
                       steps=args.steps, guidance=args.guidance, progress=False)  # fmt: skip
        results.append({"path": model, **out})
        rows.append(row(model, out))
        a = out["adherence"]
        print(f"{model}: FID {out['fid']:.1f} (floor {out['fid_floor']:.1f}), oracle "
              f"{a['oracle_accuracy']:.3f} (ceiling {a['ceiling_accuracy']:.3f})", flush=True)  # fmt: skip
    header = ["model", "step", "n", f"FID [{results[0]['features']}]", "FID floor", "oracle %", "ceiling %",
              "per fact %"]  # fmt: skip
    table = markdown_table(header, rows)
    if args.clip_time:
        table += "\n\n" + clip_times(args)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if not args.no_append:
        append_results("Sound quality on tones (held-out captions)", table, args.note)


if __name__ == "__main__":
    main()
