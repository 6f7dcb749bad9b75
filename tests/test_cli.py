"""The command line: explain writes its pictures; bad arguments give one line and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

from PIL import Image

from noisecraft.cli import main


def test_explain_writes_three_pngs(tmp_path):
    assert (
        main(["explain", "--out", str(tmp_path), "--sampler", "euler", "--steps", "8", "--points", "200"])
        == 0
    )
    for name in ("forward.png", "reverse.png", "score.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.width > 400


def test_explain_is_deterministic(tmp_path):
    args = ["explain", "--sampler", "euler", "--steps", "5", "--points", "100", "--seed", "3"]
    main([*args, "--out", str(tmp_path / "a")])
    main([*args, "--out", str(tmp_path / "b")])
    assert (tmp_path / "a" / "reverse.png").read_bytes() == (tmp_path / "b" / "reverse.png").read_bytes()


def _run(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "noisecraft", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_bad_arguments_one_line_nonzero_exit():
    for args in (
        ["explain", "--steps", "0"],
        ["explain", "--sampler", "nope"],
        ["explain", "--mixture", "x"],
        ["serve", "--port", "99999"],
        ["serve", "--port", "-1"],
    ):
        result = _run(*args)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert "error:" in result.stderr.strip().splitlines()[-1]


def test_samplers_lists_names():
    result = _run("samplers")
    assert result.returncode == 0 and "euler" in result.stdout.split()
