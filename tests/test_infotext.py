"""A1111's `parameters` text: written in every PNG beside ours, parsed as A1111 does, read by --from-png."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from noisecraft.cli import main
from noisecraft.images import METADATA_KEY, read_png_text
from noisecraft.infotext import infotext, metadata_from_infotext, parse_infotext, png_parameters
from noisecraft.model import SamplingOptions

# Written by AUTOMATIC1111 1.10 (processing.create_infotext): prompt, negative prompt, then the fields.
A1111_TEXT = (
    "a photo of a cat, sitting on a mat\n"
    "Negative prompt: blurry, low quality\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.55, Version: v1.10.1"
)


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).copy()


def write_png(path, text: dict[str, str], size: int = 8) -> None:
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    Image.new("RGB", (size, size), "gray").save(path, pnginfo=info)


def test_parse_a1111_text_as_a1111_does() -> None:
    fields = parse_infotext(A1111_TEXT)
    assert fields["Prompt"] == "a photo of a cat, sitting on a mat"
    assert fields["Negative prompt"] == "blurry, low quality"
    assert fields["Steps"] == "20" and fields["Sampler"] == "DPM++ 2M" and fields["Schedule type"] == "Karras"
    assert (fields["Size-1"], fields["Size-2"]) == ("512", "768") and fields["Model hash"] == "6ce0161689"
    assert fields["Version"] == "v1.10.1"


def test_a1111_text_becomes_our_options() -> None:
    meta = metadata_from_infotext(A1111_TEXT)
    assert meta["prompt"] == "a photo of a cat, sitting on a mat"
    assert meta["negative_prompt"] == "blurry, low quality"
    assert (meta["model"], meta["weights"]) == ("v1-5-pruned-emaonly", "6ce0161689")
    options = SamplingOptions.from_metadata(meta)
    assert (options.steps, options.sampler, options.schedule) == (20, "dpmpp_2m", "karras")
    assert (options.guidance, options.seed, options.width, options.height) == (7.0, 1, 512, 768)
    assert options.strength == 0.55


def test_older_and_quoted_forms() -> None:
    """Before A1111 1.9 the schedule was part of the sampler's name; values with commas are JSON strings;
    a multi-line prompt stays whole; a last line with under 3 fields is prompt, not parameters."""
    old = 'two\nlines\nSteps: 5, Sampler: DPM++ 2M Karras, CFG scale: 4.5, Seed: 3, Model: "a, b: c"'
    meta = metadata_from_infotext(old)
    assert meta["prompt"] == "two\nlines" and meta["model"] == "a, b: c"
    options = SamplingOptions.from_metadata(meta)
    assert (options.sampler, options.schedule, options.guidance) == ("dpmpp_2m", "karras", 4.5)
    assert parse_infotext("just a prompt: nothing else")["Prompt"] == "just a prompt: nothing else"
    with pytest.raises(ValueError, match="Steps: not a number"):
        metadata_from_infotext("x\nSteps: many, Sampler: Euler, Seed: 1")


def test_hostile_parameters_line_parses_in_linear_time() -> None:
    started = time.perf_counter()
    for line in ('a: "x, ' * 40_000, "word " * 100_000 + ": y", "k: v, " * 50_000):
        parse_infotext("p\n" + line)
    assert time.perf_counter() - started < 5  # a backtracking regex takes minutes on these


def test_our_text_round_trips() -> None:
    meta = {"prompt": "a red circle", "negative_prompt": "blue, green", "steps": 7,
            "sampler": "euler_ancestral", "schedule": "sgm_uniform", "guidance": 3.5, "seed": 11,
            "size": [8, 16], "weights": "0123456789abcdef", "model": "/home/someone/models/tiny"}  # fmt: skip
    text = infotext(meta)
    assert "Sampler: Euler a, Schedule type: SGM Uniform, CFG scale: 3.5, Seed: 11, Size: 8x16" in text
    assert "Model hash: 0123456789, Model: tiny, Version: noisecraft" in text and "/home" not in text
    back = SamplingOptions.from_metadata(metadata_from_infotext(text))
    assert back == SamplingOptions(steps=7, sampler="euler_ancestral", schedule="sgm_uniform", guidance=3.5,
                                   seed=11, width=8, height=16)  # fmt: skip
    assert metadata_from_infotext(text)["negative_prompt"] == "blue, green"


def test_cli_pngs_carry_both_and_from_png_reads_a1111s(tiny_pipeline_dir, tmp_path):
    """A CLI PNG has A1111's text too; with only that text left, --from-png makes the same image."""
    args = ["a star", "--model", str(tiny_pipeline_dir), "--quiet", "--seed", "5", "--steps", "3"]
    assert (
        main(["generate", *args, "--sampler", "Euler a", "--schedule", "beta", "--out", str(tmp_path / "a")])
        == 0
    )
    (first,) = (tmp_path / "a").glob("*.png")
    text = read_png_text(first)
    assert METADATA_KEY in text and text["parameters"].startswith("a star\nSteps: 3, Sampler: Euler a, ")
    assert "Schedule type: Beta" in text["parameters"]
    only_a1111 = tmp_path / "a1111.png"
    write_png(only_a1111, {"parameters": text["parameters"]})
    assert png_parameters(only_a1111)["sampler"] == "Euler a"
    out = ["--out", str(tmp_path / "b"), "--quiet", "--model", str(tiny_pipeline_dir)]
    assert main(["generate", "--from-png", str(only_a1111), *out]) == 0
    (again,) = (tmp_path / "b").glob("*.png")
    assert np.array_equal(pixels(again), pixels(first))


def test_from_png_without_any_parameters_is_one_clear_error(tmp_path, capsys):
    bare = tmp_path / "bare.png"
    write_png(bare, {"Comment": "hello"})
    assert main(["generate", "--from-png", str(bare)]) == 2
    assert "neither noisecraft's nor A1111's" in capsys.readouterr().err


# Two units as the sd-webui-controlnet extension (1.1.4xx) writes them after A1111's own fields.
CONTROLNET_TEXT = (
    "a house\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 2, Size: 512x512, Model: v1-5, "
    'ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 0.6, '
    "Resize Mode: Crop and Resize, Low Vram: False, Processor Res: 512, Threshold A: 100, Threshold B: 200, "
    'Guidance Start: 0.1, Guidance End: 0.8, Pixel Perfect: False, Control Mode: Balanced", '
    'ControlNet 1: "Module: invert (from white bg & black line), Model: None, Weight: 1, '
    'Resize Mode: Crop and Resize, Guidance Start: 0, Guidance End: 1, Control Mode: Balanced", '
    "Version: v1.9.4"
)


def test_controlnet_units_become_our_controls() -> None:
    fields = parse_infotext(CONTROLNET_TEXT)
    assert fields["ControlNet 0"].startswith("Module: canny, Model: control_v11p_sd15_canny [d14c016b], ")
    assert fields["Version"] == "v1.9.4"  # the quoted units end where their quotes do
    assert metadata_from_infotext(CONTROLNET_TEXT)["controls"] == [
        {"type": "canny", "model": "control_v11p_sd15_canny", "scale": 0.6, "window": [0.1, 0.8]},
        {"type": "scribble", "scale": 1.0, "window": [0.0, 1.0]},  # Model: None → the model's own branch
    ]
    depth = CONTROLNET_TEXT.replace("Module: canny", "Module: depth_midas")
    with pytest.raises(ValueError, match="ControlNet 0: no control here makes the preprocessor 'depth_mi"):
        metadata_from_infotext(depth)
    with pytest.raises(ValueError, match="ControlNet 1: a weight"):
        metadata_from_infotext(CONTROLNET_TEXT.replace("Weight: 1,", "Weight: lots,"))


def test_our_controls_round_trip_through_a1111_text() -> None:
    controls = [
        {"type": "canny", "model": "/home/someone/cn, canny.safetensors", "scale": 0.8, "window": [0.0, 0.6],
         "map": "photo, 1.png"},
        {"type": "segment", "model": None, "scale": 1.5, "window": [0.25, 1.0], "map": "seg.png"},
        {"type": "scribble", "model": None, "scale": -0.5, "window": [0.0, 1.0], "map": "s.png"},
        {"type": "edges", "model": None, "scale": 1.0, "window": [0.0, 1.0]},  # no map named (a server's)
    ]  # fmt: skip
    meta = {"prompt": "p", "steps": 3, "sampler": "euler", "schedule": "karras", "guidance": 2.0, "seed": 1,
            "size": [8, 8], "controls": controls}  # fmt: skip
    text = infotext(meta)
    assert (
        'ControlNet 0: "Module: canny, Model: cn  canny, Weight: 0.8, Resize Mode: Just Resize, '
        'Guidance Start: 0.0, Guidance End: 0.6", Control map 0: "photo, 1.png", '
        'ControlNet 1: "Module: segment'
    ) in text and "/home" not in text and "Control map 3" not in text
    back = metadata_from_infotext(text)["controls"]
    want = [{"type": "canny", "model": "cn  canny", "scale": 0.8, "window": [0.0, 0.6],
             "map": "photo, 1.png"},
            {"type": "segment", "scale": 1.5, "window": [0.25, 1.0], "map": "seg.png"},
            {"type": "scribble", "scale": -0.5, "window": [0.0, 1.0], "map": "s.png"},
            {"type": "layout", "scale": 1.0, "window": [0.0, 1.0]}]  # fmt: skip (edges: layout's map)
    assert back == want


def test_hostile_controlnet_fields_parse_in_linear_time() -> None:
    started = time.perf_counter()
    lines = ('ControlNet 0: "' + "Module: none, " * 60_000 + '", a: b, c: d',
             "ControlNet 7: Weight, " * 40_000 + "a: b, c: d",
             'ControlNet 1: "Module: none, Weight: 2, Guidance Start: ' + "0" * 200_000 + '", a: b, c: d',
             "".join(f"ControlNet {i}: Module: none, " for i in range(1000)) + "a: b")  # fmt: skip
    for line in lines:
        meta = metadata_from_infotext("p\n" + line)
        assert len(meta.get("controls", [])) <= 100  # unit numbers have at most two digits
    assert time.perf_counter() - started < 5
