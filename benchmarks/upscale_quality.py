"""A cascade (an upscaler over its base model) against the base model's pictures enlarged: same prompts,
same seeds, so the two differ only in how the 64×64 picture is made from the 32×32 one.

    .venv/bin/python benchmarks/upscale_quality.py --model emoji64 [--num 500] [--ref-num 1899] \
        [--features inception] [--threads 2]

Rows, each at the cascade's size against the dataset rendered at that size:
- the cascade's pictures (the base model's, enlarged by the upscaler);
- the base model's pictures enlarged bilinearly (what a user gets by enlarging the thumbnail);
- the real emoji at the base size enlarged by the upscaler (the upscaler alone, given perfect input);
- the real emoji at the base size enlarged bilinearly (the best any thumbnail enlarged can do);
- the real emoji rendered at the full size (the floor: FID of n real pictures against the reference).
Figures: FID in ``--features`` (Inception by default: the domain classifier was trained at 32×32),
retrieval top-1/top-5 of the prompted item at the base size (the cascade's pictures shrunk back: the
upscaler must not change what the picture shows), and the time of 4 images at the defaults, cascade
and base alone, interleaved, on ``--threads`` threads.
"""

from __future__ import annotations

import argparse

import torch
from common import add_common_arguments, append_results, markdown_table, setup, time_interleaved

from noisecraft.evaluation.adherence import retrieval_accuracy
from noisecraft.evaluation.evaluate import distribution_scores, generate_images
from noisecraft.evaluation.features import make_features
from noisecraft.evaluation.reference import build_dataset, extract_features, pick_indices, reference_features
from noisecraft.model.upscale import enlarge, shrink
from noisecraft.pipeline import Pipeline


def pictures(
    args: argparse.Namespace, cascade: Pipeline
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Each row's pictures [N, C, H, W] at the cascade's size, the prompted indices, and the gallery at
    the base size."""
    base, factor = cascade.base, cascade.config.image_size // cascade.config.upscale_from
    small_data = build_dataset(args.dataset, base.config.image_size, None, {})
    indices = pick_indices(len(small_data), args.num, args.seed)
    prompts = [small_data[i][1] for i in indices]
    gallery = torch.stack([small_data[i][0] for i in range(len(small_data))])  # [N, C, h, w]
    made = generate_images(cascade, prompts, seed=args.seed, desc="cascade")
    small = generate_images(base, prompts, seed=args.seed, desc="base")
    real = gallery[torch.tensor(indices)]  # [n, C, h, w]
    upscaled = torch.cat([
        cascade.upscale(prompts[i : i + 50], real[i : i + 50], seed=args.seed + i).clamp(-1, 1)
        for i in range(0, len(real), 50)
    ])  # fmt: skip
    big_data = build_dataset(args.dataset, cascade.config.image_size, None, {})
    rows = {
        "cascade (text → base → upscaler)": made,
        "base, enlarged bilinearly": enlarge(small, factor).clamp(-1, 1),
        "real at the base size → upscaler": upscaled,
        "real at the base size, enlarged bilinearly": enlarge(real, factor).clamp(-1, 1),
        "real at the full size": torch.stack([big_data[i][0] for i in indices]),
    }
    return rows, torch.tensor(indices), gallery


def quality(args: argparse.Namespace, cascade: Pipeline) -> list[list[object]]:
    """One table row per kind of picture: FID at the cascade's size and retrieval at the base size."""
    rows, targets, gallery = pictures(args, cascade)
    extractor = make_features(args.features, args.dataset)
    reference = reference_features(args.dataset, extractor, size=cascade.config.image_size, num=args.ref_num)
    factor = cascade.config.image_size // cascade.config.upscale_from
    table = []
    for name, images in rows.items():
        fake = extract_features(extractor, images, desc=name)
        fid = distribution_scores(
            reference.features, fake, ["fid"], args.seed, (reference.mean, reference.cov)
        )
        top = retrieval_accuracy(shrink(images, factor), targets, gallery, ks=(1, 5))
        table.append([name, f"{fid['fid']:.2f}", f"{100 * top[1]:.1f}", f"{100 * top[5]:.1f}"])
        print(table[-1], flush=True)
    return table


def timing(args: argparse.Namespace, cascade: Pipeline) -> dict[str, float]:
    """Median seconds of 4 images at the defaults: the cascade and its base alone, interleaved."""
    prompts = ["red apple", "rocket", "blue heart", "grinning face"]
    variants = {"cascade": lambda: cascade.generate(prompts), "base": lambda: cascade.base.generate(prompts)}
    return {name: t.median for name, t in time_interleaved(variants, args.repeats, args.warmup).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="the cascade: a shipped name or a folder with base/")
    parser.add_argument("--dataset", default="emoji", help="the data it was trained on (default emoji)")
    parser.add_argument("--num", type=int, default=500, help="pictures per row (default 500)")
    parser.add_argument("--ref-num", type=int, default=1899, help="real pictures in the reference")
    parser.add_argument("--features", default="inception", help="FID features: inception or domain")
    parser.add_argument("--seed", type=int, default=0, help="prompts and seeds (default 0)")
    add_common_arguments(parser)
    args = parser.parse_args()
    setup(args)
    cascade = Pipeline.load(args.model)
    if cascade.base is None:
        parser.error(f"{args.model} is not a cascade (no upscale_from in its pipeline.json)")
    seconds = timing(args, cascade)
    table = quality(args, cascade)
    c = cascade.config
    body = (
        markdown_table(["pictures", f"FID ({args.features})", "top-1 %", "top-5 %"], table)
        + f"\n\n{args.num} prompts (names of seeded-random {args.dataset} items, seed {args.seed}), the "
        + f"defaults ({c.steps} steps {c.sampler}, guidance {c.guidance:g}) in both stages; FID at "
        + f"{c.image_size}×{c.image_size} against {args.ref_num} real pictures rendered at that size; "
        + f"retrieval among the {c.upscale_from}×{c.upscale_from} gallery. 4 images at the defaults, "
        + f"{args.threads} thread(s), interleaved medians of {args.repeats}: "
        + f"cascade {seconds['cascade']:.2f} s, base alone {seconds['base']:.2f} s. "
        + f"Weights {cascade.weights_hash}."
    )
    print(body)
    if not args.no_append:
        append_results(f"Upscaler: {c.name} over its base", body, args.note)


if __name__ == "__main__":
    main()
