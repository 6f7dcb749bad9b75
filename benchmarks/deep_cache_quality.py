"""DeepCache (--deep-cache N) on a shipped model: quality and time against the plain network.

    .venv/bin/python benchmarks/deep_cache_quality.py --model mnist --dataset mnist [--num 500] \
        [--intervals 1 2 3] [--int8]

Quality: ``evaluate`` (FID in the dataset's domain features, and its adherence figure: the classifier's
accuracy, the shapes oracle, emoji retrieval) on the same ``--num`` prompts and seeds at the model's
defaults (20 steps of dpmpp_2m, guidance), once per interval; interval 1 is the plain network. Time:
a batch of 4 images at the defaults, interleaved, on ``--threads`` threads. What this shows: whether
reusing the deep features keeps the figures within the noise of n while the steps get cheaper.
``--int8`` adds a row with every linear layer dynamically quantised to int8 (nets/quantize.py), at
interval 1.
"""

from __future__ import annotations

import argparse

from common import (
    add_common_arguments,
    adherence_percent,
    append_results,
    markdown_table,
    setup,
    time_interleaved,
)

from noisecraft.evaluation.evaluate import evaluate
from noisecraft.nets.quantize import quantize_int8
from noisecraft.pipeline import Pipeline

PROMPTS = {"mnist": "the digit 7", "shapes": "a red circle above a blue square", "emoji": "a smiling face"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist", help="a shipped model name or a model folder")
    parser.add_argument("--dataset", default="mnist", help="its dataset (mnist, shapes, emoji)")
    parser.add_argument("--num", type=int, default=500, help="images per evaluation")
    parser.add_argument("--intervals", type=int, nargs="+", default=[1, 2, 3], help="deep_cache values")
    parser.add_argument("--int8", action="store_true", help="also a row with int8 linears (nets/quantize.py)")
    add_common_arguments(parser)
    args = parser.parse_args()
    setup(args)
    pipe = Pipeline.load(args.model)
    results = {}
    for n in args.intervals:
        results[n] = evaluate(
            pipe, args.dataset, args.num, ["fid", "adherence"], deep_cache=n, progress=False
        )
        print(
            f"deep_cache={n}: FID {results[n]['fid']:.2f}, adherence {adherence_percent(results[n]):.1f}",
            flush=True,
        )
    prompt = PROMPTS.get(args.dataset, "a picture")
    int8 = None
    if args.int8:  # a second pipeline whose linears are int8 (the first keeps fp32 for its timing)
        int8 = Pipeline.load(args.model)
        quantize_int8(int8.net)
        results["int8"] = evaluate(int8, args.dataset, args.num, ["fid", "adherence"], progress=False)
        print(
            f"int8: FID {results['int8']['fid']:.2f}, adherence {adherence_percent(results['int8']):.1f}",
            flush=True,
        )
    calls = {
        f"deep_cache={n}": (lambda n=n: pipe.generate(prompt, num_images=4, deep_cache=n))
        for n in args.intervals
    }
    if int8 is not None:
        calls["int8"] = lambda: int8.generate(prompt, num_images=4)
    timing = time_interleaved(calls, args.repeats, args.warmup)

    def name(n: int | str) -> str:
        return n if n == "int8" else f"deep_cache={n}"

    base_fid, base_time = results[args.intervals[0]]["fid"], timing[f"deep_cache={args.intervals[0]}"].median
    rows = [
        [n, f"{r['fid']:.2f}", f"{r['fid'] / base_fid:.3f}", f"{adherence_percent(r):.1f}",
         f"{timing[name(n)].median:.3f}", f"{base_time / timing[name(n)].median:.2f}×"]
        for n, r in results.items()
    ]  # fmt: skip
    header = ["deep_cache", "FID", "FID / first row", "adherence %", "4 images s (median)", "speed-up"]
    body = (
        f"{markdown_table(header, rows)}\n\nModel `{args.model}` ({pipe.config.steps} steps of "
        f"{pipe.config.sampler}, guidance {pipe.config.guidance}), n = {args.num} images per row, "
        f"same prompts and seeds; FID in the {args.dataset} domain features; "
        f"time: 4 images through `generate`, {args.repeats} interleaved repeats."
    )
    print(body)
    if not args.no_append:
        append_results(f"DeepCache on `{args.model}`: quality and time per interval", body, args.note)


if __name__ == "__main__":
    main()
