"""Training configs: recipes load, overrides are typed, and every mistake is one line naming the key."""

from __future__ import annotations

import pytest
from training_helpers import RECIPE

from noisecraft.cli import main
from noisecraft.training.build import build_net
from noisecraft.training.config import TrainConfig, from_dict, load_config, resolve_recipe, to_dict
from noisecraft.training.data import make_training_dataset


def test_toy2d_recipe_loads_and_round_trips():
    config = load_config(RECIPE)
    assert config.model.kind == "mlp" and config.data.name == "toy2d" and config.steps == 2000
    assert config.model.net["input_features"] == 64
    assert from_dict(TrainConfig, to_dict(config)) == config  # JSON-able, as stored in checkpoints
    assert load_config() == TrainConfig()  # no file: the defaults


@pytest.mark.parametrize(("recipe", "text_dim"), [("shapes32", 128), ("emoji32", 384), ("mnist28", 64)])
def test_image_recipes_load_and_their_networks_build(recipe, text_dim):
    config = load_config(resolve_recipe(recipe))
    assert config.model.kind == "unet" and config.text.kind in ("builtin", "minilm")
    net = build_net(config, text_dim=text_dim)
    assert net.config.image_size == config.data.options["size"] and net.config.text_dim == text_dim
    assert net.flops_per_image() < 0.6e9  # small enough to train on a CPU (DESIGN: ~0.3 GFLOP class)


def test_overrides_are_parsed_and_typed():
    config = load_config(
        RECIPE,
        [
            "optim.lr=2e-4",
            "optim.betas=[0.8, 0.95]",
            "steps=7",
            "sampling.sigma_max=40",  # an int given to a float field becomes a float
            'sampling.prompts=["a red circle", "blue"]',
            "data.options.mixture=grid",  # a bare word is a string
            "model.net.width=16",
            "log.tensorboard=false",
        ],
    )
    assert config.optim.lr == 2e-4 and config.optim.betas == (0.8, 0.95) and config.steps == 7
    assert config.sampling.sigma_max == 40.0 and isinstance(config.sampling.sigma_max, float)
    assert config.sampling.prompts == ("a red circle", "blue")
    assert config.data.options == {"mixture": "grid", "length": 65536}
    assert config.model.net["width"] == 16 and config.model.net["depth"] == 3  # merged, not replaced
    assert config.log.tensorboard is False
    # the later override wins; the recipe file is not modified
    assert load_config(RECIPE, ["optim.lr=1", "optim.lr=3"]).optim.lr == 3.0
    assert load_config(RECIPE).optim.lr == 2e-3


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("optim.lrr=1", ["'optim.lrr'", "accepted keys", "'lr'", "'warmup_steps'"]),
        ("stepz=3", ["'stepz'", "top level", "'steps'"]),
        ("optim.lr=fast", ["optim.lr", "expected float", "'fast'"]),
        ("steps=1.5", ["steps", "expected int", "1.5"]),
        ("steps=true", ["steps", "expected int"]),  # a bool is not an int
        ("model.kind=vae", ["model.kind", "'vae'", "accepted values", "'mlp'", "'unet'", "'dit'"]),
        ("loss.weighting=snr2", ["loss.weighting", "'min_snr'"]),
        ("optim.betas=[0.9]", ["optim.betas", "a list of 2"]),
        ("optim.lr=-1", ["optim.lr must be positive"]),
        ("optim.grad_accum=3", ["optim.batch_size (256)", "optim.grad_accum (3)"]),
        ("text.cond_dropout=1.5", ["text.cond_dropout", "[0, 1)"]),
        ("ema.std=0.5", ["ema.std", "0.28"]),
        ("loss.mean_sigma=-1", ["loss.mean_sigma must be >= 0"]),
        ("loss.kind=flow_matching loss.mean_sigma=10", ["loss.mean_sigma", "'dsm' only"]),
        ("schedule.high_fraction=1", ["schedule.high_fraction", "[0, 1)"]),
        ("schedule.high_sigma=0", ["schedule.high_sigma must be positive"]),
        ("schedule.kind=logit_normal schedule.high_fraction=0.2", ["high_fraction", "'edm_lognormal' only"]),
        ("optim=3", ["optim", "expected a table"]),
        ("optim.lr", ["section.key=value"]),
    ],
)
def test_bad_overrides_name_the_key(override, needles):
    with pytest.raises(ValueError) as info:
        load_config(RECIPE, override.split())
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)


def test_bad_recipe_file_names_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = 10\n[optim]\nlr = 1e-3\nbatchsize = 4\n")
    with pytest.raises(ValueError, match=r"unknown key 'optim.batchsize' in \[optim\].*'batch_size'"):
        load_config(bad)
    bad.write_text("steps = [\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ValueError, match=r"no config file or recipe named 'nope'.*'toy2d'"):
        resolve_recipe("nope")
    assert resolve_recipe("toy2d").resolve() == RECIPE


def test_network_settings_are_checked_against_the_network_config():
    with pytest.raises(ValueError, match=r"unknown key 'model.net.widht'.*accepted keys.*'width'"):
        build_net(load_config(RECIPE, ["model.net.widht=3"]), text_dim=0)
    with pytest.raises(ValueError, match=r"model.net.width: expected int, got 'wide'"):
        build_net(load_config(RECIPE, ['model.net.width="wide"']), text_dim=0)
    with pytest.raises(ValueError, match="model.net.text_dim is 8 but the text encoder gives 16"):
        build_net(load_config(RECIPE, ["model.net.text_dim=8"]), text_dim=16)
    net = build_net(load_config(RECIPE, ["model.net.width=16"]), text_dim=4)
    assert net.config.width == 16 and net.config.text_dim == 4  # text_dim filled in from the encoder


def test_dataset_settings_name_the_key(tmp_path):
    with pytest.raises(
        ValueError, match=r"data.name: 'imagenet' is not accepted; accepted values: \[.*'toy2d'"
    ):
        make_training_dataset("imagenet", {})
    with pytest.raises(
        ValueError, match=r"unknown key 'data.options.mixtur' for 'toy2d'; accepted keys: \['mixture'"
    ):
        make_training_dataset("toy2d", {"mixtur": "ring"})
    missing = tmp_path / "no-such-folder"
    with pytest.raises(ValueError, match=rf"data.options \(folder\): image folder {missing} does not exist"):
        make_training_dataset("folder", {"root": str(missing)})
    assert len(make_training_dataset("toy2d", {"length": 10})) == 10


def test_cli_reports_a_bad_config_in_one_line(tmp_path, capsys):
    code = main(["train", "toy2d", "--out", str(tmp_path), "--set", "optim.lrr=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("noisecraft train: error: unknown key 'optim.lrr'") and "'lr'" in err[0]
    code = main(["train", "toy2d", "--out", str(tmp_path), "--set", "data.options.mixtur=ring"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "data.options.mixtur" in err[-1] and "mixture" in err[-1]
    assert not (tmp_path / "checkpoints").exists()
