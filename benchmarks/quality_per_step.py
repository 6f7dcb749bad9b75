"""Quality per step: FID against the number of network evaluations (NFE), for every sampler.

    .venv/bin/python benchmarks/quality_per_step.py --model emoji --dataset emoji [--num 2000]
        [--nfe 4 6 8 10 15 20 30 50 100 250] [--samplers euler heun ...] [--features domain|inception]
        [--sigma-max S] [--rho R]

For each sampler and each target NFE, the sampler's step count is chosen so that it calls the
network at most that many times (counted, not assumed: a calibration run on the exact 2-D mixture
denoiser counts the calls per step count), then ``evaluate`` draws ``--num`` images with fixed
seeds (image i: seed i, prompts of seeded-random training items) and computes FID against the
dataset's cached reference features. With guidance, one evaluation is one batched call on the
conditional and unconditional rows. ``ode_adaptive`` picks its own steps and is left out.

Prints a table (rows: samplers, columns: NFE), writes a PNG plot next to RESULTS.md, appends both
to RESULTS.md, and checks the target: the best sampler at 10 NFE within 10 % of the best FID at
the largest NFE.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

import torch
from common import RESULTS, add_common_arguments, append_results, markdown_table, setup

from noisecraft.denoisers import GaussianMixtureDenoiser
from noisecraft.evaluation.evaluate import evaluate
from noisecraft.noise import SeededNoise
from noisecraft.pipeline import Pipeline
from noisecraft.samplers import SAMPLERS
from noisecraft.schedules import karras

DEFAULT_NFE = (4, 6, 8, 10, 15, 20, 30, 50, 100, 250)
ADAPTIVE = {"ode_adaptive"}


def count_nfe(sampler: str, steps: int) -> int:
    """Network calls of ``sampler`` at ``steps`` steps, counted on a 2-D Gaussian-mixture denoiser."""
    mixture = GaussianMixtureDenoiser(
        torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), 0.1 * torch.eye(2).expand(2, 2, 2)
    )
    calls = 0

    def counted(x, sigma, cond=None):
        nonlocal calls
        calls += 1
        return mixture(x, sigma)

    sigmas = karras(steps, 0.002, 80.0)
    noise = SeededNoise([0])
    x = noise.randn((2,), torch.float64) * sigmas[0]
    SAMPLERS[sampler](counted, x, sigmas.double(), None, generator=noise)
    return calls


def steps_for(sampler: str, nfe: int) -> tuple[int, int] | None:
    """The most steps whose NFE is ≤ nfe, with that NFE; None when even 1 step costs more."""
    best = None
    for steps in range(1, nfe + 1):
        used = count_nfe(sampler, steps)
        if used > nfe:
            break
        best = (steps, used)
    return best


def plot(results: dict[str, dict[int, float]], title: str, path: Path) -> None:
    """FID against NFE on log-log axes, one line per sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in results.items():
        points = sorted(curve.items())
        ax.plot([n for n, _ in points], [f for _, f in points], marker="o", ms=3, label=name)
    ax.set(xscale="log", yscale="log", xlabel="network evaluations (NFE)", ylabel="FID", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a shipped model name or a saved pipeline folder")
    parser.add_argument("--dataset", required=True, help="the data the model was trained on")
    parser.add_argument("--num", type=int, default=2000, help="generated images per point (default 2000)")
    parser.add_argument("--nfe", type=int, nargs="+", default=list(DEFAULT_NFE), help="target NFE values")
    parser.add_argument("--samplers", nargs="+", default=None, help="default: every fixed-step sampler")
    parser.add_argument("--features", default=None, choices=("domain", "inception"), help="default: domain")
    parser.add_argument("--guidance", type=float, default=None, help="default: the model's")
    parser.add_argument("--sigma-max", type=float, default=None, help="first σ (default: the model's)")
    parser.add_argument("--rho", type=float, default=None, help="Karras schedule's ρ (default: the model's)")
    add_common_arguments(parser)
    args = parser.parse_args()
    setup(args)
    samplers = args.samplers or [s for s in SAMPLERS if s not in ADAPTIVE]
    unknown = sorted(set(samplers) - set(SAMPLERS) | set(samplers) & ADAPTIVE)
    if unknown or min(args.nfe) < 1 or args.num < 2:
        parser.error(f"bad request: samplers {unknown}, nfe ≥ 1, num ≥ 2")
    pipe = Pipeline.load(args.model)
    pipe.config = replace(
        pipe.config,
        sigma_max=pipe.config.sigma_max if args.sigma_max is None else args.sigma_max,
        rho=pipe.config.rho if args.rho is None else args.rho,
    )
    results: dict[str, dict[int, float]] = {}
    for name in samplers:
        results[name] = {}
        for target in sorted(args.nfe):
            plan = steps_for(name, target)
            if plan is None:
                continue
            steps, used = plan
            out = evaluate(pipe, args.dataset, args.num, ["fid"], features=args.features, steps=steps,
                           sampler=name, guidance=args.guidance, progress=False)  # fmt: skip
            results[name][used] = out["fid"]
            print(f"{name:>20} {steps:4d} steps {used:4d} NFE  FID {out['fid']:.3f}", flush=True)
    report(args, pipe, results)


def report(args: argparse.Namespace, pipe: Pipeline, results: dict[str, dict[int, float]]) -> None:
    """The table, the plot and the target check; appended to RESULTS.md unless --no-append."""
    columns = sorted({n for curve in results.values() for n in curve})
    rows = [
        [name] + [f"{curve[n]:.2f}" if n in curve else "" for n in columns] for name, curve in results.items()
    ]
    top = max(columns)
    # each sampler's largest NFE counts as its "top" (heun's 19 beside euler's 20)
    best_top = min((curve[max(curve)] for curve in results.values() if curve), default=math.inf)
    best_10 = min((f for curve in results.values() for n, f in curve.items() if n <= 10), default=math.inf)
    verdict = "met" if best_10 <= 1.1 * best_top else "NOT met"
    image = RESULTS.with_name(f"quality_per_step-{Path(args.model).name}-smax{pipe.config.sigma_max:g}.png")
    if not args.no_append:  # --no-append: print only, leave the saved plot alone
        plot(results, f"{pipe.config.name} on {args.dataset}: FID vs NFE (n={args.num})", image)
    body = (
        markdown_table(["sampler \\ NFE", *map(str, columns)], rows)
        + f"\n\nBest FID at ≤ 10 NFE: {best_10:.3f}; "
        + f"best at each sampler's largest NFE (≤ {top}): {best_top:.3f}; "
        + f"target (within 10 %): {verdict}. Plot: `{image.name}`. n = {args.num} images per point, "
        + f"features: {args.features or 'domain'}; model weights {pipe.weights_hash}; Karras schedule "
        + f"σ {pipe.config.sigma_max:g} → {pipe.config.sigma_min:g}, ρ = {pipe.config.rho:g}."
    )
    print(body)
    if not args.no_append:
        append_results(f"Quality per step: {pipe.config.name} on {args.dataset}", body, args.note)


if __name__ == "__main__":
    main()
