"""LoRA on the project's own models: the merged update equals the on-the-fly branch, adapters train on a
frozen model and are saved alone under our module names, scale 0 is the base model exactly, the
prompt syntax, the CLI (--lora, --lora-dir, PNG metadata, --from-png) and /sdapi/v1/loras."""

from __future__ import annotations

import httpx
import pytest
import torch
from conftest import make_tiny_pipeline
from PIL import Image
from safetensors import safe_open
from server_helpers import serve
from training_helpers import TEXT, TINY_UNET, tiny_config

from noisecraft.cli import main
from noisecraft.formats.lora import write_lora
from noisecraft.images import METADATA_KEY
from noisecraft.infotext import png_parameters
from noisecraft.model import OptionError
from noisecraft.model.adapters import find_adapter, parse_spec, prompt_adapters
from noisecraft.nets.layers import PaddedConv2d, TokenLinear
from noisecraft.nets.lora import LoraLayer, LoraUpdate, MergedAdapters, target_modules
from noisecraft.pipeline import Pipeline
from noisecraft.server.app import create_app
from noisecraft.server.models import ModelRegistry
from noisecraft.training import train


def random_adapter(net, path, seed=0, kinds=("attention", "conv")):
    """A kohya-named file of random rank-2 updates of ``net``'s layers (our module names)."""
    g = torch.Generator().manual_seed(seed)
    updates = []
    for name in target_modules(net, kinds):
        weight = net.get_submodule(name).weight
        down = torch.randn(2, *weight.shape[1:], generator=g) * 0.3
        up = torch.randn(weight.shape[0], 2, *([1, 1] if weight.ndim == 4 else []), generator=g) * 0.3
        updates.append(LoraUpdate(f"net.{name}.weight", down, up, alpha=4.0))
    return write_lora(path, updates, "kohya", {"test": True})


@pytest.mark.parametrize("layer", ["linear", "conv", "wrapped-conv"])
def test_the_merged_weight_is_the_on_the_fly_branch(layer):
    torch.manual_seed(0)
    base = {
        "linear": lambda: TokenLinear(12, 18),
        "conv": lambda: torch.nn.Conv2d(6, 10, 3, stride=2, padding=1),
        "wrapped-conv": lambda: PaddedConv2d(6, 10, 3, stride=2, row_padding="circular"),  # rows wrap
    }[layer]()
    wrapped = LoraLayer(base, rank=3, alpha=6.0)
    torch.nn.init.normal_(wrapped.up.weight)  # B starts at zero: give it a value
    x = torch.randn(32, 12) if layer == "linear" else torch.randn(2, 6, 9, 9)
    with torch.no_grad():
        want, plain = wrapped(x), base(x)  # base + (α/r)·B·A·x on the fly; the base alone
        merged = MergedAdapters({"net": base})
        merged.set([([wrapped.update("net.weight")], 1.0)])
        assert (base(x) - want).abs().max() < 1e-5 and (want - plain).abs().max() > 0.1
        merged.clear()
        assert torch.equal(base(x), plain)


def test_a_fused_part_touches_only_its_rows():
    qkv = torch.nn.Linear(4, 12)
    before = qkv.weight.detach().clone()
    update = LoraUpdate("net.weight", torch.ones(1, 4), torch.ones(4, 1), alpha=1.0, part=(1, 3))  # "to_k"
    merged = MergedAdapters({"net": qkv})
    merged.set([([update], 2.0)])
    changed = (qkv.weight != before).any(dim=1)
    assert changed.tolist() == [False] * 4 + [True] * 4 + [False] * 4
    assert torch.allclose(qkv.weight[4:8] - before[4:8], torch.full((4, 4), 2.0))
    merged.set([([update], 0.0)])
    assert torch.equal(qkv.weight, before)


def test_scale_zero_and_removal_give_the_base_model_exactly(tmp_path):
    pipe = make_tiny_pipeline()
    file = random_adapter(pipe.net, tmp_path / "style.safetensors")
    base = pipe.sample(["a red circle"], seed=1)
    pipe.add_lora(file, 0.7)
    adapted = pipe.sample(["a red circle"], seed=1)
    half = pipe.sample(["a red circle"], seed=1)  # the same adapters: nothing merged twice
    pipe.add_lora(file, 0.0)  # the same file again: its scale replaced
    assert len(pipe.loras) == 1 and torch.equal(pipe.sample(["a red circle"], seed=1), base)
    pipe.add_lora(file, 0.7)
    pipe.clear_loras()
    assert torch.equal(pipe.sample(["a red circle"], seed=1), base)
    assert torch.equal(adapted, half) and (adapted - base).abs().max() > 0.05


def test_the_prompt_syntax():
    assert prompt_adapters("a <lora:ink:0.5> cat <lora:soft>") == ("a cat", [("ink", 0.5), ("soft", 1.0)])
    assert prompt_adapters("no tags") == ("no tags", [])
    for bad in ("<lora::1>", "<lora:x:y>", "<lora:x:1:2>"):
        with pytest.raises(OptionError):
            prompt_adapters(bad)
    assert parse_spec("a/b.safetensors:0.25") == ("a/b.safetensors", 0.25)
    assert parse_spec("a/b.safetensors") == ("a/b.safetensors", 1.0)


def test_names_stay_inside_the_lora_folder(tmp_path):
    (tmp_path / "inside").mkdir()
    (tmp_path / "secret.safetensors").write_bytes(b"")
    with pytest.raises(OptionError, match="no LoRA named"):
        find_adapter("../secret", tmp_path / "inside")
    with pytest.raises(OptionError, match="--lora-dir"):
        find_adapter("x", None)


def test_training_saves_only_the_adapter_under_our_names(tmp_path, tiny_pipeline_dir):
    folder = tmp_path / "images"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(8):
        pixels = (torch.rand(8, 8, 3, generator=g) * 255).byte().numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("a sigma badge")
    config = tiny_config(
        *TINY_UNET,
        *TEXT[:5],
        "model.net.in_channels=3",
        "model.net.text_dim=16",
        "text.encoder.max_length=32",
        f"model.init={tiny_pipeline_dir}",
        "adapter.kind=lora",
        "adapter.rank=2",
        'adapter.targets=["attention", "conv"]',
        "data.name=folder",
        "data.options={}",
        f"data.options.root={folder}",
        "data.options.size=8",
        "optim.batch_size=4",
        "optim.lr=0.05",
        "steps=3",
    )
    trainer = train(config, tmp_path / "run")
    pipe = Pipeline.load(tiny_pipeline_dir)
    for name, p in trainer.objective.denoiser.net.named_parameters():
        if ".base." in name:  # frozen: the base model's weights, untouched by three steps at lr 0.05
            assert not p.requires_grad and torch.equal(p, pipe.net.get_parameter(name.replace(".base", "")))
    file = tmp_path / "run" / "model" / "run.safetensors"
    with safe_open(str(file), "pt") as f:
        keys, record = list(f.keys()), f.metadata()
    assert (
        all(k.startswith("lora_unet_") for k in keys) and "lora_unet_down_0_res_conv1.lora_up.weight" in keys
    )
    assert record["ss_network_dim"] == "2" and '"rank": 2' in record["noisecraft_adapter"]
    base = pipe.sample(["a sigma badge"], seed=0)
    assert (pipe.sample(["a sigma badge"], seed=0) - base).abs().max() == 0
    pipe.add_lora(file)
    assert (pipe.sample(["a sigma badge"], seed=0) - base).abs().max() > 1e-4


def test_cli_lora_flags_metadata_and_from_png(tmp_path, tiny_pipeline_dir, capsys):
    loras = tmp_path / "loras"
    random_adapter(Pipeline.load(tiny_pipeline_dir).net, loras / "ink.safetensors")
    random_adapter(Pipeline.load(tiny_pipeline_dir).net, loras / "soft.safetensors", seed=1)
    out = tmp_path / "out"
    args = [
        "generate",
        "a <lora:soft:0.5> star",
        "--model",
        str(tiny_pipeline_dir),
        "--seed",
        "3",
        "--quiet",
        "--lora",
        f"{loras / 'ink.safetensors'}:0.8",
        "--lora-dir",
        str(loras),
        "--out",
        str(out),
    ]
    assert main(args) == 0
    png = next(out.glob("*.png"))
    meta = png_parameters(png)
    assert meta["prompt"] == "a <lora:soft:0.5> star" and meta["loras"] == [{"name": "ink", "scale": 0.8}]
    assert set(meta["lora_hashes"]) == {"ink", "soft"}
    with Image.open(png) as image:
        assert "Lora hashes: " in image.info["parameters"] and METADATA_KEY in image.info
        first = image.convert("RGB").tobytes()
    again = tmp_path / "again"
    assert (
        main([
            "generate", "--from-png", str(png), "--model", str(tiny_pipeline_dir), "--lora-dir", str(loras),
            "--quiet", "--out", str(again),
        ])  # fmt: skip
        == 0  # a PNG names its model folder only by name: --model says where it is
    )
    with Image.open(next(again.glob("*.png"))) as image:
        assert image.convert("RGB").tobytes() == first
    plain = tmp_path / "plain"
    assert (
        main(
            [
                "generate",
                "a star",
                "--model",
                str(tiny_pipeline_dir),
                "--seed",
                "3",
                "--quiet",
                "--out",
                str(plain),
            ]
        )
        == 0
    )
    with Image.open(next(plain.glob("*.png"))) as image:
        assert image.convert("RGB").tobytes() != first  # the adapters made a difference
    capsys.readouterr()
    other = random_adapter(make_tiny_pipeline().net, tmp_path / "bad.safetensors")
    with safe_open(str(other), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    key = next(k for k in tensors if k.endswith("to_qkv.lora_up.weight"))
    tensors[key] = torch.zeros(99, 2)
    from safetensors.torch import save_file

    save_file(tensors, str(tmp_path / "bad.safetensors"))
    code = main(
        ["generate", "a star", "--model", str(tiny_pipeline_dir), "--lora", str(tmp_path / "bad.safetensors")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "another model" in err


def test_server_lists_the_lora_folder_and_refuses_unknown_names(tmp_path):
    pipe = make_tiny_pipeline()
    random_adapter(pipe.net, tmp_path / "ink.safetensors")
    pipe.lora_dir = tmp_path
    with serve(create_app(ModelRegistry({"tiny": pipe}))) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert [x["name"] for x in c.get("/sdapi/v1/loras").json()] == ["ink"]
        body = {"prompt": "a star <lora:ink:0.6>", "steps": 2, "width": 8, "height": 8, "seed": 1}
        made = c.post("/sdapi/v1/txt2img", json=body)
        plain = c.post("/sdapi/v1/txt2img", json={**body, "prompt": "a star"})
        assert made.status_code == 200 and made.json()["images"] != plain.json()["images"]
        missing = c.post("/sdapi/v1/txt2img", json={**body, "prompt": "a star <lora:nope>"})
        assert missing.status_code == 422 and "no LoRA named 'nope'" in missing.text
