"""Evaluation: FID / KID / precision-recall features, prompt adherence, likelihood.

    from noisecraft.evaluation.evaluate import evaluate, summary_line
    results = evaluate(Pipeline.load("mnist"), "mnist", num_samples=1000)

This file only holds names, so ``noisecraft --help`` stays fast; the modules load on first use.
(``evaluate`` is deliberately not re-exported here: the submodule of the same name would shadow it.)
"""

from __future__ import annotations

METRICS = ("fid", "kid", "pr", "adherence", "bpd")
IMAGE_DATASETS = ("shapes", "emoji", "mnist", "tones", "folder", "shards")  # tones: spectrogram images
ADHERENCE_DATASETS = ("shapes", "mnist", "emoji", "tones")
FEATURES = ("inception", "domain")

_LAZY = {
    "frechet_distance": "metrics",
    "fid_from_features": "metrics",
    "kid": "metrics",
    "precision_recall": "metrics",
    "InceptionFeatures": "features",
    "DomainFeatures": "features",
    "make_features": "features",
    "DomainClassifier": "classifier",
    "load_domain_classifier": "classifier",
    "train_domain_classifier": "classifier",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ADHERENCE_DATASETS", "FEATURES", "IMAGE_DATASETS", "METRICS", *_LAZY]
