"""`noisecraft generate` end to end on a tiny saved model: files, metadata round trip, strips, bad input."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from noisecraft import generation
from noisecraft.cli import main
from noisecraft.images import read_png_metadata, save_png


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).copy()


def test_generate_writes_pngs_with_metadata_and_grid(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "out"
    code = main(["generate", "a red circle", "a star", "--model", str(tiny_pipeline_dir), "--num", "2",
                 "--seed", "7", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    pngs = sorted(p for p in out.glob("*.png") if p.name != "grid.png")
    assert len(pngs) == 4 and (out / "grid.png").is_file()
    meta = read_png_metadata(pngs[3])
    assert meta["prompt"] == "a star" and meta["seed"] == 10 and meta["sampler"] == "euler"
    assert meta["model"] == "tiny"  # the folder's name, not where it lies (--keep-paths: the path)


def test_generate_never_overwrites_earlier_images(tiny_pipeline_dir, tmp_path):
    args = ["a red circle", "--model", str(tiny_pipeline_dir), "--num", "2", "--out", str(tmp_path)]
    args += ["--quiet"]
    assert main(["generate", *args, "--steps", "2"]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert main(["generate", *args, "--steps", "3", "--show-steps"]) == 0
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert {name: after[name] for name in before} == before  # the first call's files are untouched
    new = sorted(set(after) - set(before))
    assert "grid-1.png" in new and len(new) == 7  # 2 images, 2 strips, 2 GIFs, 1 grid, all suffixed -1
    assert all(Path(name).stem.endswith("-1") for name in new)
    assert read_png_metadata(tmp_path / "000-a-red-circle-s0-1.png")["steps"] == 3


def test_from_png_reproduces_pixels(tiny_pipeline_dir, tmp_path):
    args = ["--model", str(tiny_pipeline_dir), "--quiet"]
    main(["generate", "a blue square", "--seed", "3", "--steps", "3", "--guidance", "3.5",
          "--negative", "red", "--out", str(tmp_path / "a"), *args])  # fmt: skip
    (first,) = (tmp_path / "a").glob("*.png")
    again_args = ["generate", "--from-png", str(first), "--out", str(tmp_path / "b"), "--quiet"]
    assert main([*again_args, "--model", str(tiny_pipeline_dir)]) == 0
    (again,) = (tmp_path / "b").glob("*.png")
    assert np.array_equal(pixels(first), pixels(again))
    assert read_png_metadata(again) == read_png_metadata(first)


def test_a1111_sampler_names_and_the_schedule_flag(tiny_pipeline_dir, tmp_path):
    """`--sampler "Euler a"` is euler_ancestral; `--schedule Exponential` changes the σ spacing, is stored
    in the PNG, and `--from-png` reuses it."""
    args = ["a star", "--model", str(tiny_pipeline_dir), "--quiet", "--seed", "1", "--steps", "4"]
    assert main(["generate", *args, "--sampler", "Euler a", "--out", str(tmp_path / "alias")]) == 0
    assert main(["generate", *args, "--sampler", "euler_ancestral", "--out", str(tmp_path / "ours")]) == 0
    (alias,), (ours,) = (tmp_path / "alias").glob("*.png"), (tmp_path / "ours").glob("*.png")
    assert read_png_metadata(alias)["sampler"] == "euler_ancestral"
    assert np.array_equal(pixels(alias), pixels(ours))
    assert main(["generate", *args, "--schedule", "Exponential", "--out", str(tmp_path / "exp")]) == 0
    (exp,) = (tmp_path / "exp").glob("*.png")
    assert read_png_metadata(exp)["schedule"] == "exponential"
    assert read_png_metadata(ours)["schedule"] == "karras"
    assert not np.array_equal(pixels(exp), pixels(ours))
    again = ["generate", "--from-png", str(exp), "--out", str(tmp_path / "again"), "--quiet"]
    assert main([*again, "--model", str(tiny_pipeline_dir)]) == 0
    assert np.array_equal(pixels(next((tmp_path / "again").glob("*.png"))), pixels(exp))


def test_from_png_reproduces_guidance_rescale_and_interval(tiny_pipeline_dir, tmp_path):
    args = ["--model", str(tiny_pipeline_dir), "--quiet", "--seed", "2", "--steps", "4"]
    main(["generate", "a star", "--guidance", "4", "--guidance-rescale", "0.5",
          "--guidance-interval", "0.5", "20", "--out", str(tmp_path / "a"), *args])  # fmt: skip
    main(["generate", "a star", "--guidance", "4", "--out", str(tmp_path / "plain"), *args])
    (first,) = (tmp_path / "a").glob("*.png")
    meta = read_png_metadata(first)
    assert meta["guidance_rescale"] == 0.5 and meta["guidance_interval"] == [0.5, 20.0]
    assert not np.array_equal(pixels(first), pixels(next((tmp_path / "plain").glob("*.png"))))
    again_args = ["--from-png", str(first), "--out", str(tmp_path / "b"), "--quiet"]
    assert main(["generate", *again_args, "--model", str(tiny_pipeline_dir)]) == 0
    (again,) = (tmp_path / "b").glob("*.png")
    assert np.array_equal(pixels(first), pixels(again)) and read_png_metadata(again) == meta


@pytest.mark.parametrize("field", ["model", "init", "mask", "negative_prompt"])
def test_from_png_with_a_non_text_field_is_one_line(tiny_pipeline_dir, tmp_path, capsys, field):
    meta = {"prompt": "a star", "steps": 2, "sampler": "euler", "guidance": 2.0, "seed": 0}
    png = save_png(
        Image.new("RGB", (8, 8)), tmp_path / "in.png", {**meta, "model": str(tiny_pipeline_dir), field: 5}
    )
    assert main(["generate", "--from-png", str(png), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert f"{field} must be a string, got 5" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_a_bad_out_fails_before_sampling(tiny_pipeline_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("keep me")
    monkeypatch.setattr(generation, "run", lambda *args: pytest.fail("sampled before checking --out"))
    for out in (tmp_path / "file", tmp_path / "file" / "below"):
        args = ["generate", "a star", "--model", str(tiny_pipeline_dir), "--quiet", "--out", str(out)]
        assert main(args) == 2
        assert capsys.readouterr().err.startswith("noisecraft generate: error: ")
    assert (tmp_path / "file").read_text() == "keep me"


def test_show_steps_writes_strip_and_gif(tiny_pipeline_dir, tmp_path):
    main(
        [
            "generate",
            "a star",
            "--model",
            str(tiny_pipeline_dir),
            "--show-steps",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    (strip,) = tmp_path.glob("*-steps.png")
    (gif,) = tmp_path.glob("*-steps.gif")
    with Image.open(gif) as animation:
        assert animation.n_frames == 4  # one frame per step of the model's default 4
    with Image.open(strip) as image:
        assert image.width > 4 * 8 * 4  # four columns of 8×8 images enlarged 4×


def test_init_and_mask(tiny_pipeline_dir, tmp_path):
    args = ["--model", str(tiny_pipeline_dir), "--quiet", "--seed", "1"]
    main(["generate", "a star", "--out", str(tmp_path / "src"), *args])
    (source,) = (tmp_path / "src").glob("*.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 4:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    main(["generate", "a circle", "--init", str(source), "--mask", str(tmp_path / "mask.png"),
          "--out", str(tmp_path / "inpaint"), *args])  # fmt: skip
    (painted,) = (tmp_path / "inpaint").glob("*.png")
    assert np.array_equal(pixels(painted)[:, :4], pixels(source)[:, :4])
    assert read_png_metadata(painted)["inpaint"] is True
    main(
        [
            "generate",
            "a circle",
            "--init",
            str(source),
            "--strength",
            "0",
            "--out",
            str(tmp_path / "i2i"),
            *args,
        ]
    )
    (same,) = (tmp_path / "i2i").glob("*.png")
    assert np.array_equal(pixels(same), pixels(source))


def test_a_mask_of_any_size_is_fitted_to_the_model(tmp_path):
    """A 256×256 mask on the 32×32 shapes model: area-averaged to 32×32, as a 32×32 mask would be."""
    start = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(start).save(tmp_path / "start.png")
    for size in (256, 32):
        mask = np.zeros((size, size), np.uint8)
        mask[:, size // 2 :] = 255  # repaint the right half
        Image.fromarray(mask).save(tmp_path / f"mask{size}.png")
        code = main(["generate", "a red circle", "--model", "shapes", "--steps", "2", "--seed", "3",
                     "--init", str(tmp_path / "start.png"), "--mask", str(tmp_path / f"mask{size}.png"),
                     "--out", str(tmp_path / f"out{size}"), "--quiet"])  # fmt: skip
        assert code == 0
    (big,), (small,) = (list((tmp_path / f"out{size}").glob("*.png")) for size in (256, 32))
    assert np.array_equal(pixels(big)[:, :16], start[:, :16])  # the left half kept exactly
    assert not np.array_equal(pixels(big)[:, 16:], start[:, 16:])
    assert np.array_equal(pixels(big), pixels(small))


def test_explain_forward_on_a_real_image(tmp_path):
    image = Image.fromarray((np.indices((16, 16)).sum(0) * 8).astype(np.uint8)).convert("RGB")
    image.save(tmp_path / "in.png")
    assert (
        main(["explain", "--forward", str(tmp_path / "in.png"), "--size", "16", "--out", str(tmp_path)]) == 0
    )
    assert (tmp_path / "forward-image.png").is_file()


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width×height pixels: Pillow refuses it as a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "no-such-model"], "unknown model"),
        (["--sampler", "nope"], "unknown sampler"),
        (["--schedule", "cosine"], "unknown schedule 'cosine'; valid: karras, exponential"),
        (["--strength", "1.5", "--init", "SOURCE"], "strength: must be in [0, 1], got 1.5"),
        (["--steps", "0"], "positive integer"),
        (["--guidance", "nan"], "finite"),
        (["--guidance-rescale", "2"], "guidance rescale must be in [0, 1], got 2.0"),
        (["--guidance-interval", "5", "1"], "must satisfy 0 <= lo < hi, got (5.0, 1.0)"),
        (["--guidance-interval", "1"], "expected 2 arguments"),
        (["--deep-cache", "0"], "deep_cache: must be a positive integer, got 0"),
        (["--deep-cache", "20"], "deep_cache: must be at most 10, got 20"),
        (["--init", "NOT_AN_IMAGE"], "not a readable image"),
        (["--init", "BOMB"], "not a readable image"),
        (["--init", "EPS"], "not a readable image"),  # Pillow may not hand it to Ghostscript
        (["--init", "SOURCE", "--mask", "BOMB"], "not a readable image"),
        (["--from-png", "BOMB"], "not a readable image"),
        (["--seed", "99999999999999999999"], "seed must be an integer from -2**63 to 2**64 - 1"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tiny_pipeline_dir, tmp_path, extra, message):
    (tmp_path / "not-an-image.png").write_text("hello")
    Image.new("RGB", (8, 8)).save(tmp_path / "source.png")
    (tmp_path / "bomb.png").write_bytes(bomb_png(100_000, 100_000))
    Image.new("RGB", (8, 8)).save(tmp_path / "image.eps")
    names = {
        "NOT_AN_IMAGE": "not-an-image.png", "SOURCE": "source.png", "BOMB": "bomb.png",
        "EPS": "image.eps",
    }  # fmt: skip
    extra = [str(tmp_path / names[a]) if a in names else a for a in extra]
    if "--model" not in extra:
        extra += ["--model", str(tiny_pipeline_dir)]
    result = subprocess.run(
        [sys.executable, "-m", "noisecraft", "generate", "a star", "--quiet", "--out", str(tmp_path), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert message in lines[-1], lines


def test_seed_minus_one_draws_a_seed_and_names_files_by_it(tiny_pipeline_dir, tmp_path, monkeypatch, capsys):
    """`--seed -1` is random (from the OS's entropy), printed, and stored as drawn: never `-s-1.png`."""
    args = ["a star", "--model", str(tiny_pipeline_dir), "--quiet", "--steps", "2", "--seed", "-1"]
    import secrets

    monkeypatch.setattr(secrets, "randbelow", lambda n: 4_000_000_000 if n == 2**32 else None)
    assert main(["generate", *args, "--num", "2", "--out", str(tmp_path / "a")]) == 0
    names = sorted(p.name for p in (tmp_path / "a").glob("0*.png"))
    assert names == ["000-a-star-s4000000000.png", "001-a-star-s4000000001.png"]
    assert read_png_metadata(tmp_path / "a" / names[1])["seed"] == 4_000_000_001
    assert "seed -1 drew seed 4000000000" in capsys.readouterr().err
    monkeypatch.undo()
    seeds = []
    for out in ("b", "c"):
        assert main(["generate", *args, "--out", str(tmp_path / out)]) == 0
        (png,) = (tmp_path / out).glob("*.png")
        seeds.append(read_png_metadata(png)["seed"])
        assert "-s-1" not in png.name and png.name.endswith(f"-s{seeds[-1]}.png")
    assert seeds[0] != seeds[1] and all(0 <= s < 2**32 for s in seeds)  # equal with chance 2^-32
