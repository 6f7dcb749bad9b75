"""Evaluate a pipeline against a dataset: FID, KID, precision/recall, prompt adherence, bits/dim.

    results = evaluate(Pipeline.load("mnist"), "mnist", num_samples=1000)
    print(summary_line(results))

Protocol. Prompts are the captions of ``num_samples`` seeded-random items of the dataset's training
split, so the generated set should match the data distribution; image i is drawn with seed
``seed + i`` (as ``Pipeline.generate`` does) and quantised to 8 bits like a saved PNG. Features of
the generated set are compared with cached features of ``ref_num`` training images. FID and KID
depend on the sample size: compare numbers only at equal ``num_samples`` and ``ref_num``.
Precision/recall use k = 3 and equally many reference and generated samples, as Kynkäänniemi et
al. do. Bits/dim is the probability-flow ODE likelihood of held-out images given their captions
(``likelihood.image_bits_per_dim``, guidance off), between the model's σ_min and σ_max.

Sound (``tones``) follows its own protocol, in ``sound.py``: held-out captions, the real renders of
the same captions as the reference, the oracle reading the clips back through Griffin-Lim.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor
from torch.utils.data import IterableDataset
from tqdm.auto import tqdm

from ..data.emoji_captions import PARAPHRASE_FILE, SECOND_PARAPHRASE_FILE, THIRD_PARAPHRASE_FILE, paraphrases
from ..likelihood import PRIOR_SIGMA_MAX, image_bits_per_dim
from ..model import SamplingOptions
from ..model.folder import TRAINING_FILE, training_data
from ..noise import check_seed
from ..pipeline import Pipeline
from . import ADHERENCE_DATASETS, IMAGE_DATASETS, METRICS
from .adherence import (
    class_accuracy,
    heldout_shapes_captions,
    retrieval_accuracy,
    shapes_fact_accuracy,
    shapes_oracle_accuracy,
)
from .classifier import load_domain_classifier, shipped_classifiers
from .features import make_features, to_8bit
from .metrics import frechet_distance, gaussian_stats, kid, precision_recall
from .reference import build_dataset, dataset_images, extract_features, pick_indices, reference_features

# emoji has no held-out split: its one set is used
HELDOUT_SPLIT = {"mnist": "test", "shapes": "heldout", "tones": "heldout"}
PARAPHRASE_SETS = {  # emoji eval keys
    "paraphrase": PARAPHRASE_FILE,
    "paraphrase2": SECOND_PARAPHRASE_FILE,
    "paraphrase3": THIRD_PARAPHRASE_FILE,
}
DEFAULT_REF_NUM = {"domain": 10_000, "inception": 2_000}  # Inception: ~1 s per image per CPU core


def default_metrics(dataset: str) -> tuple[str, ...]:
    """fid, kid, pr, plus adherence where the dataset defines it (bpd is opt-in: it is slow)."""
    return ("fid", "kid", "pr") + (("adherence",) if dataset in ADHERENCE_DATASETS else ())


def model_dataset(pipeline: Pipeline) -> str:
    """The dataset a model was trained on, read from the ``training.json`` of its folder (what
    ``noisecraft train`` exports and shipped models keep); ValueError when it names none eval knows."""
    folder = pipeline.origin if pipeline.origin is not None and pipeline.origin.is_dir() else None
    data = training_data(folder) if folder is not None else None
    name = (data or {}).get("name")
    if name not in IMAGE_DATASETS:
        where = f"{folder}/{TRAINING_FILE}" if data is not None else f"model {pipeline.config.name!r}"
        raise ValueError(
            f"{where} names no dataset eval knows (found {name!r}); give --dataset, one of "
            + ", ".join(IMAGE_DATASETS)
        )
    return name


def check_compatible(pipeline: Pipeline, dataset: str, image: Tensor) -> None:
    """ValueError naming both shapes when the model's images are not the dataset's (channels, size)."""
    c = pipeline.config
    made, data = (c.channels, c.image_size, c.image_size), tuple(image.shape)
    if made != data:
        what = "channels differ" if made[0] != data[0] else "image sizes differ"
        raise ValueError(
            f"model {c.name!r} makes {made[0]}×{made[1]}×{made[2]} images but dataset {dataset!r} has "
            f"{data[0]}×{data[1]}×{data[2]} images ({what}): evaluate a model on the data it models"
        )


def generate_images(
    pipeline: Pipeline,
    prompts: list[str],
    *,
    seed: int = 0,
    batch_size: int = 50,
    desc: str = "generate",
    progress: bool = True,
    **sample_options,
) -> Tensor:
    """[N, C, H, W] in [-1, 1] on the 8-bit grid; image i uses seed + i whatever the batching."""
    chunks = []
    with tqdm(total=len(prompts), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(prompts), batch_size):
            x = pipeline.sample(prompts[start : start + batch_size], seed=seed + start, **sample_options)
            chunks.append(to_8bit(x.cpu().clamp(-1, 1)) / 127.5 - 1)  # metrics run on the CPU in float64
            bar.update(len(x))  # counts images, not batches
    return torch.cat(chunks)


def _check_request(pipeline: Pipeline, dataset: str, metrics, num_samples: int, seed: int) -> tuple[str, ...]:
    if not isinstance(pipeline, Pipeline):
        raise ValueError(f"evaluate needs a Pipeline, got {type(pipeline).__name__}")
    if dataset not in IMAGE_DATASETS:
        raise ValueError(
            f"cannot evaluate images against dataset {dataset!r}; valid: {', '.join(IMAGE_DATASETS)}"
        )
    metrics = default_metrics(dataset) if metrics is None else tuple(metrics)
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or not metrics:
        raise ValueError(f"unknown metric(s) {unknown}; valid: {', '.join(METRICS)}")
    if "adherence" in metrics and dataset not in ADHERENCE_DATASETS:
        raise ValueError(f"no adherence measure for {dataset!r}; defined for {', '.join(ADHERENCE_DATASETS)}")
    if int(num_samples) != num_samples or num_samples < 2:
        raise ValueError(f"num_samples must be an integer ≥ 2, got {num_samples}")
    check_seed(seed, num_samples)
    return metrics


def _prompts(data, num: int, seed: int) -> tuple[list[str], list[int] | None]:
    """Captions of ``num`` seeded-random items (and their indices); a stream gives its first captions."""
    if isinstance(data, IterableDataset):
        captions = dataset_images(data, num, seed)[1]
        return [captions[i % len(captions)] for i in range(num)], None
    indices = pick_indices(len(data), num, seed)
    return [data[i][1] for i in indices], indices


def distribution_scores(
    real: Tensor, fake: Tensor, metrics, seed: int, real_stats: tuple[Tensor, Tensor] | None = None
) -> dict:
    """FID / KID / precision-recall (those in ``metrics``) of features fake [N, D] against real [M, D];
    ``real_stats``: the real set's cached (mean, covariance)."""
    out: dict = {}
    if "fid" in metrics:
        out["fid"] = frechet_distance(*(real_stats or gaussian_stats(real)), *gaussian_stats(fake))
    if "kid" in metrics:
        out["kid"], out["kid_std"] = kid(real, fake, generator=torch.Generator().manual_seed(seed))
    if "pr" in metrics:  # as many reference samples as generated ones
        count = min(len(fake), len(real))
        subset = real[pick_indices(len(real), count, seed)]
        out["precision"], out["recall"] = precision_recall(subset, fake, k=3)
    return out


def _distribution_metrics(
    generated: Tensor, dataset: str, kind: str, metrics, *, size, ref_num, options, cache_dir, seed, progress
) -> dict:
    """FID / KID / precision-recall of generated images against the dataset's cached reference."""
    extractor = make_features(kind, dataset)
    reference = reference_features(
        dataset, extractor, size=size, num=ref_num or DEFAULT_REF_NUM[kind], options=options,
        cache_dir=cache_dir, progress=progress,
    )  # fmt: skip
    out: dict = {
        "features": extractor.name,
        "ref_num": len(reference.features),
        "reference": str(reference.path),
    }
    fake = extract_features(extractor, generated, desc="features", progress=progress)
    stats = (reference.mean, reference.cov)
    return out | distribution_scores(reference.features, fake, metrics, seed, stats)


def _adherence(pipeline, dataset: str, data, indices, generated, num, seed, progress, **sample) -> dict:
    """The dataset's prompt-adherence score(s); see ``adherence.py`` for the definitions."""
    if dataset == "mnist":
        labels = data.labels[torch.tensor(indices)]
        return {"class_accuracy": class_accuracy(generated, labels, load_domain_classifier("mnist"))}
    if dataset == "emoji":
        return _emoji_retrieval(pipeline, data, indices, generated, seed, progress, **sample)
    captions = heldout_shapes_captions(num, pipeline.config.image_size)
    images = generate_images(
        pipeline, captions, seed=seed, desc="generate held-out", progress=progress, **sample
    )
    return {
        "oracle_accuracy": shapes_oracle_accuracy(images, captions),
        "oracle_prompts": "heldout",
        "oracle_facts": shapes_fact_accuracy(images, captions),
    }


def _emoji_retrieval(pipeline, data, indices, generated, seed: int, progress: bool, **sample) -> dict:
    """Retrieval of the prompted emoji: for the names of the sampled items (``generated``), and for
    each held-out paraphrase set (``data.emoji_captions.paraphrases``), one image each from seed + i."""
    bar = tqdm(range(len(data)), desc="emoji gallery", disable=not progress, leave=False)
    gallery = torch.stack([data[i][0] for i in bar])  # [N, 3, H, W]
    top = retrieval_accuracy(generated, torch.tensor(indices), gallery, ks=(1, 5))
    out = {"retrieval_top1": top[1], "retrieval_top5": top[5]}
    for key, path in PARAPHRASE_SETS.items():
        prompts, targets = paraphrases(data.entries, path)
        if not prompts:  # a font that draws none of the set's emoji
            continue
        images = generate_images(
            pipeline, prompts, seed=seed, desc=f"generate {key}s", progress=progress, **sample
        )
        typed = retrieval_accuracy(images, torch.tensor(targets), gallery, ks=(1, 5))
        out |= {f"{key}_top1": typed[1], f"{key}_top5": typed[5], f"{key}_num": len(prompts)}
    return out


def _image_scores(
    pipeline: Pipeline, dataset: str, data, metrics, kind: str, num: int, reference: dict, common: dict,
    sample: dict,
) -> dict:  # fmt: skip
    """FID / KID / P-R against the cached training reference and adherence, for an image dataset."""
    out: dict = {}
    seed, progress = common["seed"], common["progress"]
    generated, indices = None, None
    if {"fid", "kid", "pr"} & set(metrics) or ("adherence" in metrics and dataset in ("mnist", "emoji")):
        prompts, indices = _prompts(data, num, seed)
        generated = generate_images(pipeline, prompts, **common, **sample)
    if {"fid", "kid", "pr"} & set(metrics):
        size = pipeline.config.image_size
        out.update(_distribution_metrics(generated, dataset, kind, metrics, size=size, seed=seed,
                                         progress=progress, **reference))  # fmt: skip
    if "adherence" in metrics:
        args = (pipeline, dataset, data, indices, generated, num, seed, progress)
        out["adherence"] = _adherence(*args, batch_size=common["batch_size"], **sample)
    return out


def _bits_per_dim(pipeline: Pipeline, dataset: str, options, num: int, seed: int, progress: bool) -> dict:
    """Mean bits/dim of ``num`` held-out images given their captions, by the probability-flow ODE."""
    c = pipeline.config
    split = HELDOUT_SPLIT.get(dataset)
    images, captions = dataset_images(build_dataset(dataset, c.image_size, split, options), num, seed)
    bar = tqdm(desc="bits/dim (ODE evaluations)", disable=not progress, leave=False)
    with pipeline.placement.context():
        bpd = image_bits_per_dim(
            pipeline.denoiser,
            to_8bit(images).to(torch.uint8),
            pipeline.encode(captions),
            generator=torch.Generator().manual_seed(seed),
            device=pipeline.placement.device,
            sigma_min=c.sigma_min,
            sigma_max=max(c.sigma_max, PRIOR_SIGMA_MAX),  # the prior must match p_σmax
            callback=lambda nfe, sigma: bar.update(),
        )
    bar.close()
    std = float(bpd.std()) if len(bpd) > 1 else None  # JSON has no NaN
    return {"bpd": float(bpd.mean()), "bpd_std": std, "bpd_num": len(bpd), "bpd_split": split or "all"}


def _settings(pipeline: Pipeline, dataset: str, num_samples: int, metrics, seed: int, **sample) -> dict:
    """The settings an evaluation ran with, the head of its results."""
    c = pipeline.config
    return {
        "model": c.name, "weights": pipeline.weights_hash, "dataset": dataset, "num_samples": num_samples,
        "seed": seed, "image_size": c.image_size, "channels": c.channels, "metrics": list(metrics),
        **sample,
    }  # fmt: skip


def evaluate(
    pipeline: Pipeline,
    dataset: str,
    num_samples: int = 1000,
    metrics: list[str] | tuple[str, ...] | None = None,
    *,
    features: str | None = None,
    seed: int = 0,
    batch_size: int = 50,
    steps: int | None = None,
    sampler: str | None = None,
    guidance: float | None = None,
    deep_cache: int = 1,
    ref_num: int | None = None,
    bpd_num: int = 4,
    dataset_options: dict | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
) -> dict:
    """Score a pipeline on a dataset; returns a JSON-ready dict (see the module docstring for the protocol).

    ``features``: "domain" (the shipped classifier of the dataset) when there is one, else "inception".
    """
    start_time = time.perf_counter()
    metrics = _check_request(pipeline, dataset, metrics, num_samples, seed)
    c = pipeline.config
    data = build_dataset(dataset, c.image_size, "train", dataset_options)
    streamed = isinstance(data, IterableDataset)  # shards: no len(), no indexing
    check_compatible(pipeline, dataset, next(iter(data))[0] if streamed else data[0][0])
    kind = features or ("domain" if dataset in shipped_classifiers() else "inception")
    options = SamplingOptions(steps=steps, sampler=sampler, guidance=guidance, deep_cache=deep_cache)
    options = options.resolve(c)
    sample = {"steps": options.steps, "sampler": options.sampler, "guidance": options.guidance}
    if options.deep_cache != 1:
        sample["deep_cache"] = options.deep_cache
    results = _settings(pipeline, dataset, num_samples, metrics, seed, **sample)
    common = {"seed": seed, "batch_size": batch_size, "progress": progress}
    if dataset == "tones":  # sound: held-out captions, real renders of them, the oracle through Griffin-Lim
        from .sound import tones_scores

        scores = tones_scores(
            pipeline, metrics, kind, num_samples, options=dataset_options, **common, **sample
        )
    else:
        reference = {"ref_num": ref_num, "options": dataset_options, "cache_dir": cache_dir}
        scores = _image_scores(pipeline, dataset, data, metrics, kind, num_samples, reference, common, sample)
    results.update(scores)
    if "bpd" in metrics:
        results.update(_bits_per_dim(pipeline, dataset, dataset_options, bpd_num, seed, progress))
    results["seconds"] = round(time.perf_counter() - start_time, 2)
    return results


def summary_line(results: dict) -> str:
    """One line: model, dataset, n, then each score that was computed."""
    parts = [f"{results['model']} on {results['dataset']}", f"n={results['num_samples']}"]
    if "fid" in results:
        floor = f" (floor {results['fid_floor']:.3f})" if "fid_floor" in results else ""
        parts.append(f"FID {results['fid']:.3f} [{results['features']}]{floor}")
    if "kid" in results:
        parts.append(f"KID {results['kid']:.5f} ± {results['kid_std']:.5f}")
    if "precision" in results:
        parts.append(f"precision {results['precision']:.3f} recall {results['recall']:.3f}")
    for key, value in (results.get("adherence") or {}).items():
        if isinstance(value, float):
            parts.append(f"{key.replace('_', ' ')} {value:.3f}")
        elif isinstance(value, dict):  # per-fact scores: "oracle facts: count 0.95, colour 0.90, …"
            facts = ", ".join(f"{name} {score:.2f}" for name, score in value.items())
            parts.append(f"{key.replace('_', ' ')}: {facts}")
    if "bpd" in results:
        parts.append(f"{results['bpd']:.3f} bits/dim ({results['bpd_split']}, n={results['bpd_num']})")
    return " | ".join(parts)
