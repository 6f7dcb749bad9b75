"""Files and flags from someone else: only PNG/JPEG/WebP decoded, FIFOs refused, a PNG's parameters
checked and its paths not followed, every number bounded, NaN refused, names not paths in outputs,
and outputs never overwritten."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading

import pytest
import torch
from conftest import make_tiny_pipeline
from PIL import EpsImagePlugin, Image
from safetensors.torch import load_file, save_file

from noisecraft import generation
from noisecraft.cli import main
from noisecraft.components import ComponentError
from noisecraft.images import open_image, read_png_metadata, save_png
from noisecraft.model import SamplingOptions
from noisecraft.model.sampling import NonFiniteError, sample
from noisecraft.pipeline import Pipeline
from noisecraft.server.imaging import BadImage, decode_image

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n{} loop\n"  # Ghostscript would never end


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def generate(tmp_path, *args: str) -> int:
    return main(["generate", *args, "--out", str(tmp_path / "out"), "--quiet"])


# -- 1. which images are decoded -----------------------------------------------------------------


def test_only_png_jpeg_and_webp_are_decoded_and_no_ghostscript_runs(
    tiny_pipeline_dir, tmp_path, monkeypatch, capsys
):
    def never(*args, **kwargs):
        raise AssertionError("a subprocess was started for an image")

    monkeypatch.setattr(subprocess, "Popen", never)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", never)
    (tmp_path / "a.eps").write_bytes(EPS)
    for kind in ("TIFF", "BMP", "GIF"):
        Image.new("RGB", (8, 8)).save(tmp_path / f"a.{kind.lower()}", format=kind)
    for name in ("a.eps", "a.tiff", "a.bmp", "a.gif"):
        with pytest.raises(ValueError, match=r"not a readable image \(PNG, JPEG, WEBP only\)"):
            open_image(tmp_path / name)
    for kind in ("PNG", "JPEG", "WEBP"):
        Image.new("RGB", (8, 8), "red").save(tmp_path / f"ok.{kind.lower()}", format=kind)
        assert open_image(tmp_path / f"ok.{kind.lower()}").size == (8, 8)
    with pytest.raises(BadImage, match="init_images: not a readable image"):
        decode_image("data:image/eps;base64," + base64.b64encode(EPS).decode(), "init_images", 64)
    assert (
        generate(tmp_path, "a star", "--model", str(tiny_pipeline_dir), "--init", str(tmp_path / "a.eps"))
        == 2
    )
    assert "a.eps: not a readable image (PNG, JPEG, WEBP only)" in one_line_error(capsys)


def test_pixels_are_bounded_before_decoding(tmp_path):
    Image.new("L", (64, 65)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match="64×65 is more than 4096 pixels"):
        open_image(tmp_path / "big.png", max_pixels=4096)


def _in_thread(fn, fifo) -> BaseException | None:
    """Run fn in a thread for at most 20 s; a FIFO it blocks on is opened for writing to free it."""
    outcome: list[BaseException | None] = []

    def target():
        try:
            fn()
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001 (handed to the test)
            outcome.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():
        with open(fifo, "wb"):  # the reader gets EOF and the thread ends
            pass
        thread.join(20)
        pytest.fail("blocked on a FIFO")
    return outcome[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    err = _in_thread(lambda: open_image(fifo), fifo)
    assert isinstance(err, ValueError) and "not a regular file" in str(err)
    err = _in_thread(lambda: read_png_metadata(fifo), fifo)
    assert isinstance(err, ValueError) and "not a regular file" in str(err)


# -- 3. --from-png ------------------------------------------------------------------------------


def _png(tmp_path, **meta) -> str:
    base = {"prompt": "a star", "steps": 2, "sampler": "euler", "guidance": 2.0, "seed": 0, "model": "emoji"}
    return str(save_png(Image.new("RGB", (8, 8)), tmp_path / "in.png", {**base, **meta}))


def test_from_png_does_not_follow_its_paths_unless_allowed(tiny_pipeline_dir, tmp_path, capsys):
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "secret.png")
    png = _png(tmp_path, model=str(tiny_pipeline_dir), init=str(tmp_path / "secret.png"), strength=0.5)
    assert generate(tmp_path, "--from-png", png) == 2
    err = one_line_error(capsys)
    assert (
        f"asks to read local files (model '{tiny_pipeline_dir}', init image '{tmp_path}/secret.png')" in err
    )
    assert "pass --model / --init, or --allow-paths" in err and not (tmp_path / "out").exists()
    assert generate(tmp_path, "--from-png", png, "--allow-paths") == 0
    assert f"reading the init '{tmp_path}/secret.png'" in capsys.readouterr().err
    (made,) = (tmp_path / "out").glob("*.png")
    assert read_png_metadata(made)["init"] == "secret.png"  # and its own output names no path
    assert generate(tmp_path, "--from-png", png, "--model", str(tiny_pipeline_dir), "--init", png) == 0


@pytest.mark.parametrize(
    "meta, flags, message",
    [
        ({"steps": 10**9}, [], "steps must be in [1, 10000], got 1000000000"),
        ({"steps": 500}, [], "asks for 500 steps, more than 150: pass --steps to confirm"),
        ({"width": 4096, "height": 4096}, [], "asks for 4096×4096 pixels, more than 1048576"),
        ({"width": 10**6}, [], "width must be in [1, 16384]"),
        ({"guidance": 1e308}, [], "guidance must be in [-1000, 1000]"),
        ({"model": "/no/such/folder"}, [], "asks to read local files (model '/no/such/folder')"),
        ({"steps": 500}, ["--steps", "0"], "steps: must be a positive integer"),  # a flag wins, checked
    ],
)
def test_from_png_is_checked_like_the_command_line(tmp_path, capsys, meta, flags, message):
    assert generate(tmp_path, "--from-png", _png(tmp_path, **meta), *flags) == 2
    assert message in one_line_error(capsys)


def test_from_png_flags_win_over_the_png(tiny_pipeline_dir, tmp_path):
    png = _png(tmp_path, steps=500, model="tiny")
    assert generate(tmp_path, "--from-png", png, "--steps", "3", "--model", str(tiny_pipeline_dir)) == 0
    (made,) = (tmp_path / "out").glob("*.png")
    assert read_png_metadata(made)["steps"] == 3


# -- 6. every number bounded --------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--steps", "1000000000"], "steps must be in [1, 10000]"),
        (["--steps", "1" + "0" * 30], "steps must be in [1, 10000]"),
        (["--num", "1000000000"], "1000000000 images in one request; at most 10000"),
        (["--width", "1000000000"], "width must be in [1, 16384]"),
        (["--guidance", "1e308"], "guidance must be in [-1000, 1000]"),
    ],
)
def test_huge_flags_are_one_line(tiny_pipeline_dir, tmp_path, capsys, flags, message):
    assert generate(tmp_path, "a star", "--model", str(tiny_pipeline_dir), *flags) == 2
    assert message in one_line_error(capsys)


def _copy(tiny_pipeline_dir, tmp_path):
    return shutil.copytree(tiny_pipeline_dir, tmp_path / "model")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"image_size": 10**9}, "ModelSettings.image_size = 1000000000 is beyond 1048576"),
        ({"image_size": 20_000}, "image_size must be in [1, 16384]"),
        ({"steps": 10**9}, "ModelSettings.steps = 1000000000 is beyond"),
        ({"steps": 20_000}, "steps must be in [1, 10000]"),
        (
            {"precond": "vp_eps", "num_train_timesteps": 10**12},
            "num_train_timesteps = 1000000000000 is beyond",
        ),
        ({"precond": "vp_eps", "num_train_timesteps": 10**6}, "num_train_timesteps must be in [1, 100000]"),
        ({"guidance": 1e308}, "guidance must be in [-1000, 1000]"),
        ({"sigma_max": 1e300}, "sigma_max must be in [0, 1e+06]"),
        ({"sigma_data": 0}, "sigma_data must be positive"),
    ],
)
def test_pipeline_json_numbers_are_bounded(tiny_pipeline_dir, tmp_path, change, message):
    folder = _copy(tiny_pipeline_dir, tmp_path)
    values = json.loads((folder / "pipeline.json").read_text())
    (folder / "pipeline.json").write_text(json.dumps({**values, **change}))
    with pytest.raises(ComponentError, match=message.replace("[", r"\[").replace("+", r"\+")):
        Pipeline.load(folder)


def test_deep_json_and_huge_component_configs_are_one_line(tiny_pipeline_dir, tmp_path, capsys):
    folder = _copy(tiny_pipeline_dir, tmp_path)
    settings = (folder / "pipeline.json").read_text()
    (folder / "pipeline.json").write_text("[" * 100_000)
    assert generate(tmp_path, "a star", "--model", str(folder)) == 2
    assert "pipeline.json: unreadable (RecursionError" in one_line_error(capsys)
    (folder / "pipeline.json").write_text(settings)
    record = json.loads((folder / "net" / "config.json").read_text())
    for channels, message in ((10**7, "UNetConfig.channels = 10000000 is beyond"), (10**5, "more than")):
        record["config"]["channels"] = channels
        (folder / "net" / "config.json").write_text(json.dumps(record))
        assert generate(tmp_path, "a star", "--model", str(folder)) == 2
        assert message in one_line_error(capsys)


# -- 7. NaN and non-float weights, non-finite samples ------------------------------------------


@pytest.mark.parametrize(
    "damage, message", [("nan", "holds NaN or infinity"), ("int8", "stored as torch.int8")]
)
def test_weights_are_checked_at_load(tiny_pipeline_dir, tmp_path, damage, message):
    folder = _copy(tiny_pipeline_dir, tmp_path)
    path = folder / "net" / "model.safetensors"
    state = load_file(path)
    key = next(k for k, v in state.items() if v.ndim == 4)  # a conv kernel
    state[key] = torch.full_like(state[key], float("nan")) if damage == "nan" else state[key].to(torch.int8)
    save_file(state, path)
    with pytest.raises(ComponentError, match=f"{key} .*{message}".replace("(", r"\(")):
        Pipeline.load(folder)


def test_non_finite_samples_are_an_error_naming_where():
    options = SamplingOptions(steps=2, sampler="euler", guidance=1.0, schedule="karras", sigma_min=0.1,
                              sigma_max=10.0, rho=7.0, width=4, height=4)  # fmt: skip
    with pytest.raises(NonFiniteError, match=r"the model's prediction at σ = 10 holds NaN"):
        sample(lambda x, sigma, cond=None: x * float("nan"), (1, 4, 4), options, [0])
    pipe = make_tiny_pipeline()
    with torch.no_grad():
        next(pipe.net.parameters()).fill_(float("inf"))
    with pytest.raises(NonFiniteError, match="holds NaN or infinity"):
        pipe.generate("a star", steps=2)


# -- 9. names, not paths -------------------------------------------------------------------------


def test_outputs_name_files_and_keep_paths_only_when_asked(tiny_pipeline_dir, tmp_path):
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "start.png")
    args = [
        "a star",
        "--model",
        str(tiny_pipeline_dir),
        "--init",
        str(tmp_path / "start.png"),
        "--steps",
        "2",
    ]
    assert generate(tmp_path, *args) == 0
    assert generate(tmp_path, *args, "--keep-paths") == 0
    plain, kept = (
        read_png_metadata(tmp_path / "out" / name) for name in ("000-a-star-s0.png", "000-a-star-s0-1.png")
    )
    assert (plain["model"], plain["init"]) == ("tiny", "start.png")
    start = str((tmp_path / "start.png").resolve())
    assert (kept["model"], kept["init"]) == (str(tiny_pipeline_dir.resolve()), start)
    (image,) = Pipeline.load(tiny_pipeline_dir).generate("a star", steps=1)
    assert image.info["noisecraft"]["model"] == "tiny"  # what the server's `parameters` carry


# -- 10. no overwriting ------------------------------------------------------------------------------


def test_a_name_taken_after_the_check_is_not_overwritten(tiny_pipeline_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert generate(tmp_path, "a star", "--model", str(tiny_pipeline_dir), "--steps", "2") == 0
    (first,) = out.glob("*.png")
    before = first.read_bytes()
    real, calls = generation.free_suffix, []

    def stale(folder, names, start=0):  # as if another run created the file right after the check
        calls.append(start)
        return 0 if start == 0 else real(folder, names, start)

    monkeypatch.setattr(generation, "free_suffix", stale)
    assert generate(tmp_path, "a star", "--model", str(tiny_pipeline_dir), "--steps", "3") == 0
    assert first.read_bytes() == before and calls == [0, 1]
    again = out / f"{first.stem}-1.png"
    assert read_png_metadata(again)["steps"] == 3
