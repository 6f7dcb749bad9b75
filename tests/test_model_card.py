"""`noisecraft ship`: fp16 copy that still generates, and a card with the training facts and figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
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


@pytest.mark.parametrize(("encoder", "said"), [({}, "byte-level"), ({"tokens": "words"}, "hashed words")])
def test_card_names_the_builtin_encoders_tokens(encoder, said):
    from noisecraft.model_card import card_text

    text = {"kind": "builtin", "encoder": encoder}
    training = {"step": 1, "config": {"data": {"name": "mnist"}, "text": text}}
    card = card_text("digits", "mnist28", training, {}, "cpu")
    assert said in card and "CC BY-SA 3.0" in card


@pytest.mark.parametrize(
    ("encoder", "said"), [({}, "), frozen, from"), ({"lora_rank": 8}, "low-rank branches")]
)
def test_card_says_whether_minilm_has_trained_branches(encoder, said):
    from noisecraft.model_card import card_text

    text = {"kind": "minilm", "encoder": encoder}
    training = {"step": 1, "config": {"data": {"name": "emoji"}, "text": text}}
    assert said in card_text("emoji", "emoji32", training, {}, "cpu")


def test_card_of_a_model_trained_in_several_runs_totals_them_and_chains_the_commands():
    from noisecraft.model_card import card_text
    from noisecraft.training import load_config
    from noisecraft.training.config import resolve_recipe, to_dict

    def run(step: int, *overrides: str, parent: dict | None = None) -> dict:
        config = to_dict(load_config(resolve_recipe("toy2d"), [f"steps={step}", *overrides]))
        record = {"step": step, "images_seen": 10 * step, "train_seconds": 1800.0 * step, "config": config}
        return record if parent is None else {**record, "parent": {**parent, "source": "somewhere/model"}}

    first = run(5)
    third = run(2, "optim.lr=0.0005", "model.init=x", parent=run(4, "model.init=y", parent=first))
    card = card_text("toy", "toy2d", third, {}, "cpu")
    assert (
        "in 3 runs" in card
        and "| steps | 11 (5 + 4 + 2) |" in card
        and "| images seen | 110 (50 + 40 + 20) |" in card
    )
    assert "5.50 h" in card
    assert "noisecraft train toy2d --out runs/toy-1 --set steps=5\n" in card  # toy2d's own steps differ
    assert "--out runs/toy-2 --set steps=4 model.init=runs/toy-1/model\n" in card
    assert "--out runs/toy-3 --set steps=2 model.init=runs/toy-2/model optim.lr=0.0005\n" in card
    assert "noisecraft eval runs/toy-3/model" in card
    single = card_text("toy", "toy2d", run(5), {}, "cpu")
    assert (
        "| steps | 5 |" in single and "--out runs/toy --set steps=5\n" in single and "in 1 runs" not in single
    )


def test_ship_refuses_a_folder_without_training_record(tmp_path):
    model = make_tiny_pipeline().save(tmp_path / "model")
    assert (
        main(["ship", str(model), "--name", "x", "--recipe", "r.toml", "--dest", str(tmp_path / "out")]) == 2
    )


def _trained_model(folder):
    """A saved tiny pipeline with the training.json of a `noisecraft train` export."""
    model = make_tiny_pipeline().save(folder)
    (model / "training.json").write_text(json.dumps({"step": 1, "config": {"data": {"name": "shapes"}}}))
    return model


def test_ship_keeps_the_existing_model_when_the_new_one_is_broken(tmp_path, capsys):
    dest = _trained_model(tmp_path / "shipped")
    (dest / "MODEL_CARD.md").write_text("the model shipped before\n")
    broken = _trained_model(tmp_path / "run" / "model")
    (broken / "net" / "model.safetensors").unlink()
    assert main(["ship", str(broken), "--name", "x", "--recipe", "r.toml", "--dest", str(dest)]) == 2
    assert "model.safetensors is missing" in capsys.readouterr().err
    assert (dest / "MODEL_CARD.md").read_text() == "the model shipped before\n"
    Pipeline.load(dest)  # still whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "shipped"]  # no temporary left behind


@pytest.mark.parametrize(
    "change, message",
    [
        ("dest_holds_other_files", "exists and is not a saved model: refusing to replace it"),
        ("name_is_a_path", "--name '../x': use letters, digits"),
        ("training_is_a_list", "training.json: expected a JSON object, got list"),
        ("training_config_is_a_list", "training.json: unexpected contents"),
        ("eval_is_a_list", "eval.json: expected a JSON object, got list"),
        ("eval_is_not_json", "eval.json: not valid JSON"),
    ],
)
def test_ship_bad_input_is_one_line_and_nothing_is_lost(tmp_path, capsys, change, message):
    model = _trained_model(tmp_path / "model")
    dest, name, extra = tmp_path / "dest", "x", []
    if change == "dest_holds_other_files":
        dest.mkdir()
        (dest / "precious.txt").write_text("keep me")
    elif change == "name_is_a_path":
        name = "../x"
    elif change.startswith("training"):
        value = [1] if change == "training_is_a_list" else {"config": [1]}
        (model / "training.json").write_text(json.dumps(value))
    else:
        (tmp_path / "eval.json").write_text("[1]" if change == "eval_is_a_list" else "{fid")
        extra = ["--eval", str(tmp_path / "eval.json")]
    args = ["ship", str(model), "--name", name, "--recipe", "r.toml", "--dest", str(dest), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not dest.exists() or [p.name for p in dest.iterdir()] == ["precious.txt"]


def test_card_of_a_distilled_model_names_its_teacher_cost_and_distill_command():
    from noisecraft.model_card import card_text
    from noisecraft.training.config import to_dict
    from noisecraft.training.distill import distill_config

    config = to_dict(distill_config("mnist", None, ["steps=400", "distill.guidance=2.0"]))
    teacher = {"step": 6000, "images_seen": 384000, "train_seconds": 3600.0, "config": {"threads": 1}}
    student = {"step": 400, "images_seen": 12800, "train_seconds": 1800.0, "config": config}
    student["parent"] = teacher
    card = card_text("mnist-cd", "distill", student, {}, "cpu")
    assert "| distilled from | `mnist`, by consistency distillation" in card
    assert "400 steps, 0.50 h of wall time in steps on 1 thread(s), at most 0.50 CPU-hours" in card
    assert "noisecraft distill mnist --out runs/mnist-cd --set steps=400 distill.guidance=2.0\n" in card
    assert "noisecraft train" not in card  # the teacher's runs are on its own card
    assert "distilled from" not in card_text("mnist", "mnist28", teacher, {}, "cpu")


def test_card_of_a_student_distilled_further_sums_both_distillations():
    """A second distillation from an earlier student (another guidance): the card counts both runs'
    steps, time and threads, and reproduces both, the second starting from the first's student."""
    from noisecraft.model_card import card_text
    from noisecraft.training.config import to_dict
    from noisecraft.training.distill import distill_config

    teacher = {"step": 6000, "images_seen": 384000, "train_seconds": 3600.0, "config": {"threads": 1}}
    first = {"step": 400, "images_seen": 12800, "train_seconds": 1800.0, "parent": teacher,
             "config": to_dict(distill_config("mnist", None, ["steps=400"]))}
    second = {"step": 200, "images_seen": 6400, "train_seconds": 900.0, "parent": first,
              "config": to_dict(distill_config("mnist", None, ["steps=200", "threads=2",
                                                               "model.init=elsewhere/model"]))}  # fmt: skip
    card = card_text("mnist-cd", "distill", second, {}, "cpu")
    cost = "600 (400 + 200) steps, 0.75 h of wall time in steps on 1 + 2 thread(s), at most 1.00 CPU-hours"
    assert cost in card
    assert "noisecraft distill mnist --out runs/mnist-cd-1 --set steps=400\n" in card
    second_line = "noisecraft distill mnist --out runs/mnist-cd-2 --set steps=200 threads=2"
    second_line += " model.init=runs/mnist-cd-1/model"
    assert second_line + "\n" in card
    assert "noisecraft train" not in card
