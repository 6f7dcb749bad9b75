"""Disturbed image sets, and the domain feature spaces' ranking of them (evaluation.disturb)."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from noisecraft.evaluation.classifier import (
    DomainClassifier,
    DomainClassifierConfig,
    load_domain_classifier,
    shipped_classifiers,
)
from noisecraft.evaluation.classifier_data import DOMAIN_DATA
from noisecraft.evaluation.disturb import (
    DEFAULT_LEVELS,
    disturb,
    disturbance_fids,
    gaussian_blur,
    rises_monotonically,
)
from noisecraft.evaluation.features import DomainFeatures


def _images(n: int = 8, c: int = 3, size: int = 16) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize("kind", sorted(DEFAULT_LEVELS))
def test_disturb_keeps_shape_and_range_and_level_zero_is_the_identity(kind):
    images = _images()
    g = torch.Generator().manual_seed(1)
    assert torch.equal(disturb(images, kind, 0.0, g), images)
    out = disturb(images, kind, DEFAULT_LEVELS[kind][-1], g)
    assert out.shape == images.shape and out.min() >= -1 and out.max() <= 1
    assert not torch.equal(out, images)


def test_disturb_refuses_unknown_kinds_and_negative_levels():
    g = torch.Generator()
    with pytest.raises(ValueError, match="unknown disturbance 'swirl'"):
        disturb(_images(), "swirl", 0.1, g)
    with pytest.raises(ValueError, match="≥ 0"):
        disturb(_images(), "noise", -0.1, g)


def test_gaussian_blur_of_a_point_is_the_normalised_gaussian():
    sigma, size = 1.5, 21
    point = torch.zeros(1, 1, size, size)
    point[0, 0, 10, 10] = 1.0
    blurred = gaussian_blur(point, sigma)[0, 0]
    offsets = torch.arange(-5, 6, dtype=torch.float32)
    line = torch.exp(-0.5 * (offsets / sigma) ** 2)
    line = line / line.sum()  # the kernel reaches 3σ → 5 pixels (its sum is over those)
    assert torch.allclose(blurred[5:16, 5:16], line[:, None] * line[None, :], atol=1e-6)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5)
    flat = torch.full((1, 3, 9, 9), 0.25)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat)  # constants survive the reflected border


def test_black_square_and_salt_pepper_touch_the_expected_pixels():
    white = torch.ones(4, 3, 20, 20)
    g = torch.Generator().manual_seed(2)
    squared = disturb(white, "rectangles", 0.3, g)
    assert ((squared == -1).all(dim=1).flatten(1).sum(1) == 36).all()  # a 6×6 square, every channel
    grey = torch.zeros(50, 1, 40, 40)
    peppered = disturb(grey, "salt_pepper", 0.1, g)
    hit = (peppered != 0).float()
    assert hit.mean().item() == pytest.approx(0.1, abs=0.006)  # 80,000 pixels: σ ≈ 0.001
    assert set(peppered[hit.bool()].unique().tolist()) == {-1.0, 1.0}


def test_disturbance_fids_rise_in_pixel_space_and_a_flat_curve_is_refused():
    images = _images(200, 1, 8)
    curves = disturbance_fids(lambda x: x.flatten(1), images, {"noise": (0.1, 0.3, 0.6)})
    assert rises_monotonically(curves) and curves["noise"][0] > 0
    assert not rises_monotonically({"noise": [1.0, 3.0, 2.0]})


def test_dense_features_keep_the_sign_and_the_logits():
    config = DomainClassifierConfig(1, 16, 3, widths=(4, 8), feature_dim=32)
    torch.manual_seed(0)
    sparse = DomainClassifier(config).eval()
    dense = DomainClassifier(replace(config, dense_features=True))
    dense.load_state_dict(sparse.state_dict())
    images = _images(16, 1, 16)
    features = dense.eval().features(images)
    assert (features < 0).any() and torch.equal(F.relu(features), sparse.features(images))
    assert torch.equal(dense(images), sparse(images))


@pytest.mark.parametrize("domain", shipped_classifiers())
def test_shipped_classifier_features_rank_every_disturbance_in_order(domain):
    from noisecraft.data.emoji import DEFAULT_FONT

    if domain == "emoji" and not Path(DEFAULT_FONT).is_file():
        pytest.skip("fonts-noto-color-emoji not installed")
    classifier = load_domain_classifier(domain)
    if domain == "tones":  # 200 clips of each split of its test seed, not all 1,500 (≈ 50 ms each)
        from noisecraft.data.tones import TonesDataset

        parts = [TonesDataset(length=200, seed=102, split=split) for split in ("train", "heldout")]
        images = torch.stack([data[i][0] for data in parts for i in range(len(data))])
    else:
        images = DOMAIN_DATA[domain]("test", classifier.config.image_size)[0][:400]
    features = DomainFeatures(classifier, domain)
    curves = disturbance_fids(features, images)
    assert rises_monotonically(curves), curves


def test_classifier_command_trains_saves_and_reports_the_disturbance_check(tmp_path, monkeypatch, capsys):
    from noisecraft.evaluation import classifier_training as module

    g = torch.Generator().manual_seed(3)
    images, labels = torch.rand(64, 1, 32, 32, generator=g) * 2 - 1, torch.arange(64) % 10
    monkeypatch.setitem(module.DOMAIN_DATA, "mnist", lambda split, size: (images, labels))
    module.main(["mnist", "--out", str(tmp_path / "clf"), "--epochs", "1"])
    out = capsys.readouterr().out
    assert "mnist: test accuracy" in out and "FID under blur (0.5: " in out
    assert "disturbance check: FID" in out
    assert load_domain_classifier(tmp_path / "clf").config.num_classes == 10
