"""The ``generate --control …`` flags (repeatable, one set per control): argparse only; ``ControlSpec``
checks the values and ``Pipeline.run`` uses them."""

from __future__ import annotations

import argparse
from typing import Any

from .control_maps import CONTROL_TYPE_HELP, CONTROL_TYPES

PER_CONTROL = ("control_type", "control_model", "control_scale", "control_window")


def add_control_flags(p: argparse.ArgumentParser) -> None:
    """--control MAP and its per-control settings on a subcommand's parser."""
    g = p.add_argument_group(
        "controls", "steer the layout with a map (ControlNet); repeat --control for several, each setting "
        "once for all or once per --control, in order"
    )  # fmt: skip
    g.add_argument("--control", action="append", default=[], metavar="MAP", help="a control map image")
    g.add_argument(
        "--control-type", action="append", choices=CONTROL_TYPES, metavar="TYPE",
        help="; ".join(f"{k}: {v}" for k, v in CONTROL_TYPE_HELP.items()) + " (default: layout)",
    )  # fmt: skip
    g.add_argument(
        "--control-model", action="append", metavar="FILE_OR_DIR",
        help="the control branch: a noisecraft control folder, a diffusers ControlNetModel folder or a "
        "ControlNet .safetensors file (default: the model's own control/)",
    )  # fmt: skip
    g.add_argument("--control-scale", action="append", type=float, metavar="S", help="strength (default: 1)")
    g.add_argument(
        "--control-window", action="append", type=float, nargs=2, metavar=("LO", "HI"),
        help="active from step fraction LO to HI, as A1111's guidance start/end (default: 0 1)",
    )  # fmt: skip


def control_requests(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One dict per --control: map (the file), type, model, scale, window; ValueError for a setting given
    neither once nor once per --control."""
    maps = list(args.control or [])
    per: dict[str, list] = {}
    for name in PER_CONTROL:
        given = getattr(args, name, None) or []
        if given and not maps:
            raise ValueError(f"--{name.replace('_', '-')} needs a --control MAP")
        if given and len(given) not in (1, len(maps)):
            raise ValueError(
                f"--{name.replace('_', '-')} given {len(given)} times for {len(maps)} --control maps"
            )
        per[name] = given * len(maps) if len(given) == 1 else given
    out = []
    for i, path in enumerate(maps):
        item: dict[str, Any] = {"map": path}
        for name, values in per.items():
            if values:
                item[name.removeprefix("control_")] = values[i]
        out.append(item)
    return out
