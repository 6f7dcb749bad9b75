"""Training what a model hears, not what it draws: ``model.frozen_net`` with MiniLM's low-rank branches
(``configs/emoji32-text.toml``) keeps model.init's network bit for bit and exports a whole model whose
text encoder is the adapted one."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from noisecraft.cli import main
from noisecraft.model import find_model
from noisecraft.pipeline import Pipeline
from noisecraft.training import load_config

RECIPE = "configs/emoji32-text.toml"


def write_folder(folder, n: int = 8) -> None:
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        pixels = (torch.rand(32, 32, 3, generator=g) * 255).byte().numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a picture of a red apple number {i}")


def test_the_recipe_trains_the_text_encoder_alone_and_exports_a_whole_model(tmp_path):
    write_folder(tmp_path / "images")
    sets = [
        "steps=2", "threads=1", "optim.batch_size=4", "optim.lr=0.01", "optim.warmup_steps=0",
        "data.name=folder", "data.options={}", f"data.options.root={tmp_path / 'images'}",
        "data.options.size=32", "log.progress=false",
    ]  # fmt: skip
    assert main(["train", RECIPE, "--out", str(tmp_path / "run"), "--set", *sets]) == 0
    folder = tmp_path / "run" / "model"
    trained, shipped = (load_file(f / "net" / "model.safetensors") for f in (folder, find_model("emoji")))
    assert trained.keys() == shipped.keys()
    assert all(torch.equal(trained[k].to(shipped[k].dtype), shipped[k]) for k in shipped)  # drawn as before
    branches = load_file(folder / "text_encoder" / "model.safetensors")
    assert len(branches) == 72 and any(v.abs().max() > 0 for k, v in branches.items() if ".up." in k)
    adapted, base = Pipeline.load(folder), Pipeline.load("emoji")
    prompt = ["an emoji of a watermelon"]
    heard, before = adapted.encode(prompt), base.encode(prompt)
    assert not heard.tokens.requires_grad  # loaded to run: no graph
    assert (heard.tokens - before.tokens).abs().max() > 1e-4  # heard anew
    assert adapted.generate(prompt, seed=0, steps=2)[0].size == (32, 32)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["model.init="], "model.init"),
        (["text.encoder.lora_rank=0"], "a text encoder that trains"),
        (["adapter.kind=lora"], "no adapter, distillation or upscaler"),
    ],
)
def test_a_frozen_net_recipe_names_what_it_needs(sets, message):
    with pytest.raises(
        ValueError, match=f"model.frozen_net trains the text encoder alone: it needs.*{message}"
    ):
        load_config(RECIPE, sets)


def test_an_adapter_trains_against_the_text_encoder_its_base_model_runs(tmp_path, capsys):
    """configs/emoji32-lora.toml on the shipped emoji: its recipe names emoji's own adapted MiniLM; a
    recipe that names another encoder stops before the first step with one line."""
    write_folder(tmp_path / "images")
    sets = [
        "steps=1", "optim.batch_size=4", "data.options={}", f"data.options.root={tmp_path / 'images'}",
        "data.options.size=32", "log.progress=false", "sampling.every=0",
    ]  # fmt: skip
    recipe = "configs/emoji32-lora.toml"
    assert (
        main(["train", recipe, "--out", str(tmp_path / "other"), "--set", *sets, "text.encoder.lora_rank=0"])
        == 2
    )
    assert (
        "set text.* to match" in capsys.readouterr().err and not (tmp_path / "other" / "checkpoints").exists()
    )
    assert main(["train", recipe, "--out", str(tmp_path / "run"), "--set", *sets]) == 0
    assert (tmp_path / "run" / "model" / "run.safetensors").is_file()
