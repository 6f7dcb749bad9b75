"""Evaluating a text-to-sound model on tones: the shipped classifier's facts, the Fréchet distance in
its features, the oracle through the spectrogram round trip, and ``noisecraft eval`` end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from noisecraft.cli import main
from noisecraft.data.tones import TonesDataset
from noisecraft.evaluation import evaluate as evaluate_module
from noisecraft.evaluation.classifier import DomainClassifier, DomainClassifierConfig, load_domain_classifier
from noisecraft.evaluation.classifier_data import tones_classes, tones_facts, tones_labels
from noisecraft.evaluation.classifier_training import (
    classifier_accuracy,
    group_accuracies,
    grouped_cross_entropy,
)
from noisecraft.evaluation.evaluate import distribution_scores, evaluate
from noisecraft.evaluation.features import make_features
from noisecraft.evaluation.sound import heldout_items, oracle_scores
from noisecraft.nets import UNet, UNetConfig
from noisecraft.pipeline import Pipeline, PipelineConfig
from noisecraft.text.builtin import BuiltinTextEncoder, BuiltinTextEncoderConfig


@pytest.fixture(scope="module")
def heldout():
    """Two disjoint sets of 48 held-out renders (spectrograms and captions)."""
    images, captions = heldout_items(96, seed=5)
    return (images[:48], captions[:48]), (images[48:], captions[48:])


def tiny_tones_pipeline() -> Pipeline:
    """An untrained 1×64×64 text-conditioned U-Net: it makes noise-like spectrograms."""
    torch.manual_seed(0)
    encoder = BuiltinTextEncoder(BuiltinTextEncoderConfig(dim=16, depth=1, heads=2, max_length=64))
    net = UNet(
        UNetConfig(
            image_size=64, in_channels=1, channels=8, channel_mult=(1, 2), blocks_per_level=1,
            attention_resolutions=(), head_dim=8, text_dim=16, mid_attention=False,
        )
    )  # fmt: skip
    config = PipelineConfig(name="tiny", image_size=64, channels=1, steps=2, sampler="euler", sigma_max=10.0)
    return Pipeline(net, encoder, config)


def test_grouped_classifier_has_one_softmax_per_fact():
    groups = tuple(len(values) for _, values in tones_facts())
    assert sum(groups) == len(tones_classes()) == 41 and groups == (2, 2, 15, 16, 2, 4)
    logits = torch.zeros(3, 41)  # uniform within each group: the loss is Σ log(group size)
    loss = grouped_cross_entropy(logits, torch.zeros(3, len(groups), dtype=torch.long), groups)
    assert loss.item() == pytest.approx(sum(math.log(g) for g in groups))
    with pytest.raises(ValueError, match="must be positive and sum to 41"):
        DomainClassifierConfig(num_classes=41, groups=(2, 2))
    model = DomainClassifier(DomainClassifierConfig(image_size=16, num_classes=41, groups=groups))
    assert model.predict(torch.zeros(5, 1, 16, 16)).shape == (5, 6)


def test_shipped_tones_classifier_reads_every_fact_of_unseen_clips():
    data = TonesDataset(length=40, seed=7, split="heldout")  # seed 7: neither its training nor test set
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.tensor([tones_labels(data.clip_and_caption(i)[0]) for i in range(len(data))])
    classifier = load_domain_classifier("tones")
    assert classifier.config.groups == (2, 2, 15, 16, 2, 4)
    assert min(group_accuracies(classifier, images, labels)) >= 0.95
    assert classifier_accuracy(classifier, images, labels) >= 0.9


def test_frechet_distance_is_zero_on_real_renders_small_between_them_large_to_noise(heldout):
    (first, _), (second, _) = heldout
    features = make_features("domain", "tones")
    real, other = features(first), features(second)
    noise = features(torch.rand(48, 1, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert distribution_scores(real, real, ["fid"], 0)["fid"] < 1e-6
    between, to_noise = (distribution_scores(real, x, ["fid"], 0)["fid"] for x in (other, noise))
    assert between < 0.1 * to_noise


def test_oracle_reads_real_renders_through_the_round_trip_and_not_noise(heldout):
    (images, captions), _ = heldout
    real = oracle_scores(images[:24], captions[:24], seed=0)
    assert real["accuracy"] >= 0.75 and set(real["facts"]) >= {"parts", "loudness", "kind", "pitch"}
    noise = torch.rand(24, 1, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert oracle_scores(noise, captions[:24], seed=0)["accuracy"] == 0.0
    with pytest.raises(ValueError, match="one caption per clip"):
        oracle_scores(images[:2], captions[:3])


def test_tones_eval_is_seeded_and_reads_its_dataset_from_training_json(tmp_path, capsys):
    folder = tiny_tones_pipeline().save(tmp_path / "model")
    (folder / "training.json").write_text(json.dumps({"config": {"data": {"name": "tones"}}}))
    out = tmp_path / "results.json"
    argv = ["eval", "--model", str(folder), "--num", "5", "--steps", "1", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("tiny on tones | n=5 | FID ") and "(floor " in line and "ceiling accuracy" in line
    results = json.loads(out.read_text())
    assert results["dataset"] == "tones" and results["features"].startswith("domain-tones-")
    assert "no audio network can be downloaded" in results["features_about"]
    assert results["ref_num"] == 5 and results["prompts"] == "heldout captions"
    assert results["fid"] > results["fid_floor"] > 0  # noise is further from real renders than others are
    adherence = results["adherence"]
    assert adherence["oracle_accuracy"] == 0.0 and adherence["ceiling_accuracy"] >= 0.8
    again = evaluate(Pipeline.load(folder), "tones", 5, steps=1, progress=False)
    assert again["fid"] == results["fid"] and again["adherence"] == adherence

    assert main(["eval", str(folder), "--model", str(folder)]) == 2
    assert "give the model once" in capsys.readouterr().err
    (folder / "training.json").write_text(json.dumps({"config": {"data": {"name": "toy2d"}}}))
    assert main(["eval", str(folder), "--num", "3", "--quiet"]) == 2
    assert "names no dataset eval knows (found 'toy2d'); give --dataset" in capsys.readouterr().err


LOG_AXIS = {"f_min": 150.0, "mel_break_hz": 1.0}  # the frequency axis of configs/tones64.toml


def test_oracle_hears_clips_in_their_own_format():
    images, captions = heldout_items(24, seed=5, options=LOG_AXIS)
    fmt = TonesDataset(**LOG_AXIS).audio
    right = oracle_scores(images, captions, seed=0, fmt=fmt)["accuracy"]
    wrong = oracle_scores(images, captions, seed=0)["accuracy"]  # heard as HTK mel bands
    assert right >= 0.75 and wrong <= right - 0.3


def test_a_perfect_generator_in_another_format_scores_the_floor(monkeypatch):
    """Real renders are drawn in the model's own format: a model that returns them exactly has FID 0
    (both sets re-banded into the classifier's format alike) and the oracle's ceiling; ``split=train``
    draws the prompts from the training split instead."""
    pipeline = tiny_tones_pipeline()
    pipeline.config.audio = TonesDataset(**LOG_AXIS).audio
    for split in ("heldout", "train"):
        options = {**LOG_AXIS, "split": split}

        def perfect(pipe, prompts, *, seed, options=options, **_):
            images, captions = heldout_items(len(prompts), seed, options)
            assert captions == list(prompts)
            return images

        monkeypatch.setattr(evaluate_module, "generate_images", perfect)
        results = evaluate(
            pipeline, "tones", 6, ["fid", "adherence"], dataset_options={"split": split}, progress=False
        )
        assert results["fid"] < 1e-6 < results["fid_floor"] and results["prompts"] == f"{split} captions"
        adherence = results["adherence"]
        assert adherence["oracle_accuracy"] == adherence["ceiling_accuracy"] >= 0.8
        assert adherence["oracle_prompts"] == split


def test_the_reference_plays_the_notes_the_model_trained_on(monkeypatch, tmp_path):
    """A model trained on every semitone (its training.json says so) that returns the real semitone renders
    exactly has FID 0; against the default four notes per register it would not, and ``--data notes=…``
    still chooses."""
    pipeline = tiny_tones_pipeline()
    pipeline.config.audio = TonesDataset(**LOG_AXIS).audio
    recipe = {"config": {"data": {"name": "tones", "options": {"notes": "semitones", "length": 50}}}}
    (tmp_path / "training.json").write_text(json.dumps(recipe))
    pipeline.origin = tmp_path

    def semitone_renders(pipe, prompts, *, seed, **_):
        return heldout_items(len(prompts), seed, {**LOG_AXIS, "notes": "semitones"})[0]

    monkeypatch.setattr(evaluate_module, "generate_images", semitone_renders)
    trained = evaluate(pipeline, "tones", 8, ["fid"], progress=False)
    assert trained["fid"] < 1e-6 and trained["notes"] == "semitones"
    four = evaluate(pipeline, "tones", 8, ["fid"], dataset_options={"notes": "four"}, progress=False)
    assert four["fid"] > 1.0 and four["notes"] == "four"
