"""Every noisecraft command in the README's shell blocks runs as written, or is marked as not run.

A command line whose comment carries a tag is not run here, and shows as skipped with its tag:
``[slow]`` (minutes to hours), ``[your weights]`` (files of your own, e.g. Stable Diffusion),
``[server]`` (runs until stopped). Every other command runs, in README order, in one temporary
folder (with the repository's ``docs/`` linked in), where ``.venv/bin/noisecraft`` is this
interpreter's noisecraft; any other tag fails.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SKIP_TAGS = ("slow", "your weights", "server")


def shell_commands(text: str) -> list[tuple[str, str]]:
    """(command, comment) of each line of the ```bash blocks, backslash-continued lines joined."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            hash_mark = re.search(r"(^|\s)#", line)  # no README command has a '#' inside quotes
            code, comment = (line[: hash_mark.start()], line[hash_mark.end() :]) if hash_mark else (line, "")
            if code.strip():
                commands.append((code.strip(), comment))
    return commands


def noisecraft_commands() -> list[tuple[str, list[str]]]:
    """(command, its tags) for every README command that runs noisecraft."""
    found = []
    for command, comment in shell_commands(README.read_text()):
        words = shlex.split(command)
        if any(w.endswith("bin/noisecraft") or w == "noisecraft" for w in words):
            found.append((command, re.findall(r"\[([^\]]+)\]", comment)))
    return found


COMMANDS = noisecraft_commands()
SKIPPED = [(c, tags) for c, tags in COMMANDS if tags]


def test_the_readme_has_commands_and_only_known_tags():
    assert len(COMMANDS) >= 10 and any(not tags for _, tags in COMMANDS)
    unknown = [(c, tags) for c, tags in COMMANDS if set(tags) - set(SKIP_TAGS)]
    assert not unknown, f"tags other than {SKIP_TAGS}: {unknown}"


@pytest.mark.parametrize(
    "command", [pytest.param(c, marks=pytest.mark.skip(reason=f"README: {' '.join(t)}")) for c, t in SKIPPED]
)
def test_marked_command(command):
    """Not run: the README marks it (listed so that every skipped command shows in the report)."""


COMMAND_TIMEOUT = 240  # seconds; the README's untagged commands take well under a minute each


def test_every_unmarked_command_runs_as_written(tmp_path):
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    program = bin_dir / "noisecraft"
    program.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m noisecraft "$@"\n')
    program.chmod(program.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "docs").symlink_to(ROOT / "docs")  # the commands' repository-relative files
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    ran = []
    for command, tags in COMMANDS:
        if tags:
            continue
        try:  # bounded: a command that waits forever (a server) must be tagged, not hang the suite
            result = subprocess.run(
                command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                timeout=COMMAND_TIMEOUT,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            pytest.fail(f"{command}: still running after {COMMAND_TIMEOUT} s (tag it [server] or [slow])")
        assert result.returncode == 0, f"{command}\n{result.stderr[-2000:]}"
        ran.append(command)
    assert any("--from-png" in c for c in ran)
    # "bit-identical again": the image regenerated from its PNG equals the first
    first = tmp_path / "outputs/generate/000-a-red-circle-left-of-a-blue-square-s0.png"
    again = tmp_path / "outputs/generate/000-a-red-circle-left-of-a-blue-square-s0-1.png"
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
