"""AUTOMATIC1111's ``parameters`` PNG text ("infotext"), which other tools read: written beside our JSON
in every generated PNG, and read back from PNGs that carry only it.

    a red circle
    Negative prompt: blurry
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, Model: v1-5

The last line is ``Key: value`` pairs; a value holding a comma, colon or newline is a JSON string. A
generation with controls adds one field per control as the sd-webui-controlnet extension writes them,
its value itself ``Key: value`` pairs, and the map's file name (ours; A1111 ignores the field):

    ControlNet 0: "Module: canny, Model: control, Weight: 0.8, Resize Mode: Just Resize,
    Guidance Start: 0.0, Guidance End: 0.6", Control map 0: photo.png
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from . import __version__
from .control_maps import TYPE_MODULES, module_type
from .images import METADATA_KEY, read_png_text
from .model.control import DEFAULT_CONTROL, OWN_CONTROL_NAMES
from .model.schedule import schedule_label
from .samplers.names import sampler_label

PARAMETERS_KEY = "parameters"  # A1111's PNG text chunk
_KEY = re.compile(r"\w[\w \-/]+")  # A1111's field names (re_param_code); no nested repeats: linear time
_SIZE = re.compile(r"(\d+)x(\d+)")
_UNIT = re.compile(r"ControlNet (\d{1,2})")  # at most 100 units, however long the text
_MODEL_HASH = re.compile(r" \[[0-9a-fA-F]{1,64}\]")  # A1111's "control_v11p_sd15_canny [d14c016b]"


def model_name(source: str) -> str:
    """The name a model goes by, never a path: a ``.safetensors`` file's stem, a folder's name."""
    path = Path(source)
    return path.stem if path.suffix == ".safetensors" else path.name or source


def quote(value: Any) -> str:
    """A1111's quoting: a value with a comma, colon or newline becomes a JSON string."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def infotext(
    meta: dict[str, Any],
    model: str | None = None,
    size: tuple[int, int] | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """A1111's text for one image's metadata (as ``Pipeline.run`` records it); ``model`` and ``size``
    override the metadata's (a server's model name, an output stretched to the asked size)."""
    width, height = size or meta["size"]
    strength = meta.get("strength") if not meta.get("inpaint") else None
    fields = {
        "Steps": meta["steps"],
        "Sampler": sampler_label(meta["sampler"]),
        "Schedule type": schedule_label(meta["schedule"]),
        "CFG scale": meta["guidance"],
        "Seed": meta["seed"],
        "Size": f"{width}x{height}",
        "Model hash": str(meta["weights"])[:10] if meta.get("weights") else None,
        "Model": model or (model_name(str(meta["model"])) if meta.get("model") else None),
        "Denoising strength": strength,
        "Lora hashes": ", ".join(f"{k}: {v}" for k, v in (meta.get("lora_hashes") or {}).items()) or None,
        **control_fields(meta.get("controls") or []),
        **(extra or {}),
        "Version": f"noisecraft {__version__}",
    }
    line = ", ".join(f"{key}: {quote(value)}" for key, value in fields.items() if value is not None)
    negative = f"\nNegative prompt: {meta['negative_prompt']}" if meta.get("negative_prompt") else ""
    return f"{meta['prompt']}{negative}\n{line}"


def control_fields(controls: list[dict[str, Any]]) -> dict[str, str]:
    """sd-webui-controlnet's ``ControlNet N`` field of each recorded control (with ``Control map N``, the
    map's file name, where the metadata has one); values never hold a comma or colon, as the extension's."""

    def plain(value: Any) -> str:
        return re.sub(r"[,:\n]", " ", str(value)).strip()

    fields = {}
    for i, c in enumerate(controls):
        model = model_name(str(c["model"])) if c.get("model") else DEFAULT_CONTROL  # the own branch
        start, end = (float(w) for w in c.get("window", (0.0, 1.0)))
        unit = {"Module": TYPE_MODULES[c.get("type", "layout")], "Model": plain(model),
                "Weight": float(c.get("scale", 1.0)), "Resize Mode": "Just Resize",
                "Guidance Start": start, "Guidance End": end}  # fmt: skip
        fields[f"ControlNet {i}"] = ", ".join(f"{k}: {v}" for k, v in unit.items())
        if c.get("map"):
            fields[f"Control map {i}"] = str(c["map"])
    return fields


def controls_from_fields(fields: dict[str, str]) -> list[dict[str, Any]]:
    """Our controls (type, model, scale, window, map when named) from the ``ControlNet N`` fields of a parsed
    infotext, in unit order; ValueError naming the field for a preprocessor we cannot make or a bad number."""
    units = sorted((int(m.group(1)), key) for key in fields if (m := _UNIT.fullmatch(key)))
    controls = []
    for index, key in units:
        unit = dict(_fields(fields[key]))
        kind = module_type(unit.get("Module", "none"))
        if kind is None:
            raise ValueError(f"{key}: no control here makes the preprocessor {unit['Module']!r}")
        model = _MODEL_HASH.sub("", unit.get("Model", "")).strip()
        try:
            scale = float(unit.get("Weight", 1.0))
            window = [float(unit.get("Guidance Start", 0.0)), float(unit.get("Guidance End", 1.0))]
        except ValueError:
            raise ValueError(f"{key}: a weight or guidance start/end that is not a number") from None
        control = {"type": kind, "scale": scale, "window": window}
        if model.lower() not in OWN_CONTROL_NAMES:
            control["model"] = model
        if fields.get(f"Control map {index}"):
            control["map"] = fields[f"Control map {index}"]
        controls.append(control)
    return controls


def parse_infotext(text: str) -> dict[str, str]:
    """A1111's fields of an infotext: "Prompt", "Negative prompt", every ``Key: value`` of the last line
    (sizes split into "Size-1" / "Size-2"), as A1111's ``parse_generation_parameters`` reads them."""
    *lines, last = text.strip().split("\n")
    fields = _fields(last)
    if len(fields) < 3:  # not a parameters line: part of the prompt
        lines, fields = [*lines, last], []
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    out = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in fields:
        size = _SIZE.fullmatch(value)
        if size:
            out[f"{key}-1"], out[f"{key}-2"] = size.groups()
        else:
            out[key] = value
    return out


def _fields(line: str) -> list[tuple[str, str]]:
    """The ``Key: value`` pairs of a line, scanned once (no regex backtracking on hostile text)."""
    out, i, decoder, quotes = [], 0, json.JSONDecoder(), True
    while (colon := line.find(":", i)) >= 0:
        key, j = line[i:colon].strip(), colon + 1
        while j < len(line) and line[j] == " ":
            j += 1
        value, end = None, None
        if quotes and line.startswith('"', j):
            try:
                value, end = decoder.raw_decode(line, j)
            except ValueError:  # unterminated: no later quote can close either, so stop trying
                quotes = False
        if not isinstance(value, str):
            comma = line.find(",", j)
            end = len(line) if comma < 0 else comma
            value = line[j:end].strip()
        if _KEY.fullmatch(key):
            out.append((key, value))
        comma = line.find(",", end)
        if comma < 0:
            break
        i = comma + 1
    return out


def metadata_from_infotext(text: str) -> dict[str, Any]:
    """Our metadata's fields from A1111's text: prompt, negative prompt, steps, sampler (A1111's name),
    guidance, seed, size, schedule, model, model hash, denoising strength, controls (ControlNet units);
    ValueError on a bad number or a preprocessor we cannot make."""
    f = parse_infotext(text)
    meta: dict[str, Any] = {"prompt": f["Prompt"], "negative_prompt": f["Negative prompt"] or None}
    schedule = f.get("Schedule type")
    if "Sampler" in f:
        meta["sampler"] = f["Sampler"]  # SamplingOptions maps A1111's names to ours
        if schedule is None and f["Sampler"].lower().endswith(" karras"):  # before A1111 1.9
            schedule = "Karras"
    if schedule and schedule.lower() != "automatic":
        meta["schedule"] = schedule
    size = "Native size" if "Native size-1" in f else "Size"  # ours: drawn at the model's size, stretched
    numbers = {"Steps": ("steps", int), "Seed": ("seed", int), "CFG scale": ("guidance", float)}
    numbers.update({"Denoising strength": ("strength", float), f"{size}-1": ("width", int)})
    numbers[f"{size}-2"] = ("height", int)
    for key, (name, kind) in numbers.items():
        if key in f:
            try:
                meta[name] = kind(f[key])
            except ValueError:
                raise ValueError(f"{key}: not a number ({f[key]!r})") from None
    for key, name in (("Model", "model"), ("Model hash", "weights")):
        if f.get(key):
            meta[name] = f[key]
    controls = controls_from_fields(f)
    if controls:
        meta["controls"] = controls
    return meta


def png_parameters(path: str | os.PathLike) -> dict[str, Any]:
    """The generation parameters a PNG carries: noisecraft's JSON, else A1111's ``parameters`` text
    translated; ValueError when it has neither."""
    text = read_png_text(path)
    if METADATA_KEY in text:
        try:
            return json.loads(text[METADATA_KEY])
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: corrupt generation parameters ({err})") from None
    if PARAMETERS_KEY in text:
        return metadata_from_infotext(text[PARAMETERS_KEY])
    raise ValueError(f"{path}: carries no generation parameters (neither noisecraft's nor A1111's)")
