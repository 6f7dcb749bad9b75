"""`noisecraft ship`: fp16 copy that still generates, and a card with the training facts and figures."""

from __future__ import annotations

import json

import numpy as np
from conftest import make_tiny_pipeline

from noisecraft.cli import main
from noisecraft.pipeline import Pipeline


def test_ship_writes_fp16_pipeline_and_card(tmp_path):
    model = make_tiny_pipeline().save(tmp_path / "run" / "model")
    training = {"step": 1234, "images_seen": 78976, "train_seconds": 7200.0,
                "config": {"data": {"name": "shapes"}, "text": {"kind": "builtin"}}}  # fmt: skip
    (model / "training.json").write_text(json.dumps(training))
    (tmp_path / "eval.json").write_text(
        json.dumps({"fid": 12.5, "adherence": {"oracle_accuracy": 0.93}, "metrics": ["fid"]})
    )
    (tmp_path / "notes.md").write_text("## Status\n\nBelow the quality bar.\n")
    dest = tmp_path / "shipped"
    args = ["--name", "shapes", "--recipe", "configs/shapes32.toml", "--eval", str(tmp_path / "eval.json")]
    args += ["--notes", str(tmp_path / "notes.md")]
    assert main(["ship", str(model), *args, "--dest", str(dest)]) == 0
    card = (dest / "MODEL_CARD.md").read_text()
    facts = ["# shapes", "| steps | 1234 |", "| images seen | 78976 |", "2.00 h", "| fid | 12.5 |"]
    facts += ["| adherence.oracle_accuracy | 0.93 |", "procedural scenes", "configs/shapes32.toml"]
    facts += ["## Status\n\nBelow the quality bar."]
    for fact in facts:
        assert fact in card, fact
    shipped = Pipeline.load(dest)
    assert shipped.config.name == "shapes"
    assert all(p.dtype.is_floating_point for p in shipped.net.parameters())
    # float16 storage: the same image up to a few 8-bit levels
    a = np.asarray(shipped.generate("a star", seed=0)[0], dtype=int)
    b = np.asarray(Pipeline.load(model).generate("a star", seed=0)[0], dtype=int)
    assert np.abs(a - b).max() <= 8


def test_ship_refuses_a_folder_without_training_record(tmp_path):
    model = make_tiny_pipeline().save(tmp_path / "model")
    assert (
        main(["ship", str(model), "--name", "x", "--recipe", "r.toml", "--dest", str(tmp_path / "out")]) == 2
    )
