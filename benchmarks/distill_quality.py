"""A distilled consistency model against its teacher: quality per step and the time of one image.

    .venv/bin/python benchmarks/distill_quality.py --student runs/mnist-cd/model --teacher mnist \
        --dataset mnist [--num 1000] [--steps 1 2 4] [--json outputs/eval/mnist-cd.json]

Quality: ``evaluate`` (FID in the dataset's domain features, and the domain classifier's accuracy or
retrieval top-1/top-5) on the same ``--num`` prompts and seeds for the teacher at its own defaults
(20 steps, guidance) and for the student at each of ``--steps`` with the ``consistency`` sampler
(guidance 1: it is in the weights). Time: one image of the model's native size, process started and
warmed, on ``--threads`` threads; the student at 1 step and the teacher at its defaults, interleaved.
Checks the goals of consistency distillation here: 2-step FID within 15 % of the teacher's, 1-step
within 30 %, adherence within 5 points at 2 steps, one image in < 50 ms at 1 step.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import (
    add_common_arguments,
    adherence_percent,
    append_results,
    markdown_table,
    setup,
    time_interleaved,
)

from noisecraft.evaluation.evaluate import evaluate
from noisecraft.pipeline import Pipeline


def retrieval_line(rows: list[dict]) -> str:
    """Emoji: top-5 and the held-out paraphrases' top-1/top-5 of every row (empty for mnist)."""
    if "retrieval_top5" not in rows[0].get("adherence", {}):
        return ""
    parts = [
        f"{r['model']} {r['steps']} steps: top-5 {adherence_percent(r, 'top5'):.1f} %, paraphrases "
        f"top-1 {adherence_percent(r, 'paraphrase_top1'):.1f} % / "
        f"top-5 {adherence_percent(r, 'paraphrase_top5'):.1f} %"
        for r in rows
    ]
    return "\n\nRetrieval beyond top-1: " + "; ".join(parts) + "."


def quality(args: argparse.Namespace, teacher: Pipeline, student: Pipeline) -> list[dict]:
    """One evaluation per row: the teacher at its defaults, then the student at each step count."""
    metrics = ["fid", "adherence"]
    rows = [{"model": "teacher", **evaluate(teacher, args.dataset, args.num, metrics, progress=False)}]
    print(f"teacher: FID {rows[0]['fid']:.2f}", flush=True)
    for steps in args.steps:
        out = evaluate(student, args.dataset, args.num, metrics, steps=steps, sampler="consistency",
                       guidance=1.0, progress=False)  # fmt: skip
        rows.append({"model": "student", **out})
        print(f"student {steps} steps: FID {out['fid']:.2f}", flush=True)
    return rows


def timing(args: argparse.Namespace, teacher: Pipeline, student: Pipeline) -> dict[str, float]:
    """Median seconds of one image, interleaved: the student at 1 step and the teacher at its defaults
    (both through ``generate``, which runs the network on 4 rows, padded), and the student's network
    alone on 1 row (what one image costs without the padding that makes it batch-independent)."""
    prompt, c = args.prompt, student.config
    cond = student.encode([prompt])
    x = torch.randn(1, c.channels, c.image_size, c.image_size, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([c.sigma_max])

    @torch.no_grad()
    def network_alone() -> None:
        student.denoiser(x * sigma, sigma, cond)

    variants = {
        "student": lambda: student.generate([prompt], steps=1, sampler="consistency", guidance=1.0),
        "teacher": lambda: teacher.generate([prompt]),
        "network": network_alone,
    }
    wall = time_interleaved(variants, args.repeats, args.warmup)
    cpu = time_interleaved(variants, args.repeats, args.warmup, clock=time.process_time)
    return {**{k: t.median for k, t in wall.items()}, **{f"{k}_cpu": t.median for k, t in cpu.items()}}


def report(args, rows: list[dict], seconds: dict[str, float], student: Pipeline) -> dict:
    """The table, the goals, and the figures as one dict (for the model card)."""
    teacher = rows[0]
    table = [["teacher", teacher["steps"], teacher["sampler"], teacher["guidance"],
              f"{teacher['fid']:.2f}", "1.00", f"{adherence_percent(teacher):.1f}"]]  # fmt: skip
    figures: dict = {"teacher_fid": teacher["fid"], "teacher_adherence": adherence_percent(teacher)}
    for row in rows[1:]:
        ratio = row["fid"] / teacher["fid"]
        table.append(["student", row["steps"], "consistency", 1.0, f"{row['fid']:.2f}", f"{ratio:.2f}",
                      f"{adherence_percent(row):.1f}"])  # fmt: skip
        figures[f"student_{row['steps']}_step_fid"] = row["fid"]
        figures[f"student_{row['steps']}_step_adherence"] = adherence_percent(row)
    by_steps = {row["steps"]: row for row in rows[1:]}
    goals = []
    for steps, limit in ((2, 1.15), (1, 1.30)):
        if steps in by_steps:
            met = by_steps[steps]["fid"] <= limit * teacher["fid"]
            goals.append(
                f"{steps}-step FID within {round(100 * (limit - 1))} %: {'met' if met else 'NOT met'}"
            )
    if 2 in by_steps:
        gap = adherence_percent(teacher) - adherence_percent(by_steps[2])
        goals.append(f"2-step adherence within 5 points ({gap:+.1f}): {'met' if gap <= 5 else 'NOT met'}")
    fast, slow, alone = seconds["student"], seconds["teacher"], seconds["network"]
    cpu_fast, cpu_slow = seconds["student_cpu"], seconds["teacher_cpu"]
    goals.append(
        f"1 step < 50 ms on one core ({1000 * cpu_fast:.1f} CPU-ms, {1000 * fast:.1f} ms wall on the shared "
        f"machine): {'met' if cpu_fast < 0.05 else 'NOT met'} in CPU time"
    )
    figures.update(student_1_step_ms=1000 * fast, teacher_ms=1000 * slow, speedup=slow / fast)
    figures["student_network_1_row_ms"] = 1000 * alone
    figures.update(student_1_step_cpu_ms=1000 * cpu_fast, teacher_cpu_ms=1000 * cpu_slow)
    body = (
        markdown_table(
            ["model", "steps", "sampler", "guidance", "FID", "FID / teacher's", "adherence %"], table
        )
        + f"\n\nOne {student.config.image_size}×{student.config.image_size} image, {args.threads} thread(s), "
        + f"interleaved medians of {args.repeats}: student 1 step {1000 * fast:.1f} ms, teacher "
        + f"{teacher['steps']} steps with guidance {1000 * slow:.1f} ms ({slow / fast:.1f}× faster); "
        + f"the student's network alone on 1 row {1000 * alone:.1f} ms. The same calls in this process's CPU "
        + "time (their cost on one core; sharing it still slows them through caches): "
        + f"student {1000 * cpu_fast:.1f} ms, teacher "
        + f"{1000 * cpu_slow:.1f} ms ({cpu_slow / cpu_fast:.1f}×), network alone "
        + f"{1000 * seconds['network_cpu']:.1f} ms.\n\n"
        + "Goals: "
        + "; ".join(goals)
        + f". n = {args.num} images per row, features: {rows[0].get('features')}; student weights "
        + f"{student.weights_hash}, re-injection σ of the multistep runs: Karras ρ = {student.config.rho:g} "
        + f"from {student.config.sigma_max:g} down to {student.config.sigma_min:g}."
        + retrieval_line(rows)
    )
    return {"body": body, "figures": figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--student", required=True, help="the distilled model folder")
    parser.add_argument("--teacher", required=True, help="the teacher: a shipped name or a folder")
    parser.add_argument("--dataset", required=True, help="the data both were trained on")
    parser.add_argument("--num", type=int, default=1000, help="generated images per row (default 1000)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4], help="student step counts")
    parser.add_argument("--prompt", default="a handwritten 7", help="the prompt of the timed image")
    parser.add_argument("--json", default=None, help="also write the figures here (for the model card)")
    add_common_arguments(parser)
    args = parser.parse_args()
    setup(args)
    teacher, student = Pipeline.load(args.teacher), Pipeline.load(args.student)
    seconds = timing(args, teacher, student)
    out = report(args, quality(args, teacher, student), seconds, student)
    print(out["body"])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out["figures"], indent=1) + "\n")
    if not args.no_append:
        append_results(
            f"Consistency distillation: {student.config.name} from {args.teacher}", out["body"], args.note
        )


if __name__ == "__main__":
    main()
