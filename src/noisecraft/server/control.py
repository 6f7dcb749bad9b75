"""Controls over HTTP: the native API's ``controls`` list and A1111's ``alwayson_scripts.controlnet.args``
(the sd-webui-controlnet extension's units) → ``ControlSpec``s. Translation only.

A client names no file on the server: a unit's ``model`` may only be empty, "None" or "control" (the
served model's own ``control/`` branch); anything else is a 422 naming the field.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from ..control_maps import A1111_MODULES, CONTROL_TYPES, ControlMapError, module_type, read_map
from ..model import ControlSpec, OptionError
from ..model.control import OWN_CONTROL_NAMES
from . import state as st


def a1111_units(scripts: dict[str, Any]) -> list[dict[str, Any]]:
    """Enabled units of ``alwayson_scripts.controlnet.args`` as {image, type, model, scale, window, field};
    a 422 naming the field for another script or a malformed unit."""
    others = [name for name in scripts if str(name).lower() != "controlnet"]
    if others:
        raise st.reject("alwayson_scripts", f"no scripts here but controlnet: {', '.join(map(str, others))}")
    script = next(iter(scripts.values()))
    args = script.get("args") if isinstance(script, dict) else None
    if not isinstance(args, list):
        raise st.reject("alwayson_scripts", 'controlnet needs {"args": [unit, …]}')
    units = []
    for i, unit in enumerate(args):
        field = f"alwayson_scripts.controlnet.args[{i}]"
        if not isinstance(unit, dict):
            raise st.reject(field, "a unit must be an object")
        if unit.get("enabled", True) is False:
            continue
        image = unit.get("image", unit.get("input_image"))
        if isinstance(image, dict):  # newer extension versions: {"image": b64, "mask": b64}
            image = image.get("image")
        module = str(unit.get("module") or "none")
        kind = module_type(module)
        if kind is None:
            known = ", ".join(A1111_MODULES)
            raise st.reject(f"{field}.module", f"unknown preprocessor {module!r}; here: {known}")
        window = (unit.get("guidance_start", 0.0), unit.get("guidance_end", 1.0))
        units.append(dict(image=image, type=kind, model=unit.get("model"), scale=unit.get("weight", 1.0),
                          window=window, field=field))  # fmt: skip
    return units


def native_units(controls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The native API's ``controls`` items ({image, type, scale, window}) with their field names."""
    return [{**c, "field": f"controls[{i}]"} for i, c in enumerate(controls)]


async def open_maps(state: st.ServerState, units: list[dict[str, Any]]) -> list[Image.Image]:
    """Each unit's base64 map with its header read (limits checked); a 422 naming the unit's field."""
    for unit in units:
        if not isinstance(unit.get("image"), str) or not unit["image"]:
            raise st.reject(f"{unit['field']}.image", "a control needs its map as a base64 image")
    opened = await st.open_images(state, {u["field"]: [u["image"]] for u in units})
    return [opened[u["field"]][0] for u in units]


def control_specs(units: list[dict[str, Any]], images: list[Image.Image]) -> tuple[ControlSpec, ...]:
    """ControlSpecs (maps decoded here, on the admission's decoding thread); a 422 naming the field."""
    specs = []
    for unit, image in zip(units, images):
        field, model = unit["field"], unit.get("model")
        if model is not None and str(model).strip().lower() not in OWN_CONTROL_NAMES:
            raise st.reject(f"{field}.model", f"unknown control model {model!r}; here: 'control'")
        if unit.get("type", "layout") not in CONTROL_TYPES:
            raise st.reject(f"{field}.type", f"unknown control type; valid: {', '.join(CONTROL_TYPES)}")
        try:
            rgb = st.converted(image, field, read_map)
            specs.append(ControlSpec(rgb, unit.get("type", "layout"), None, unit.get("scale", 1.0),
                                     tuple(unit.get("window", (0.0, 1.0)))))  # fmt: skip
        except (ControlMapError, OptionError, TypeError, ValueError) as err:
            raise st.reject(field, str(err)) from None
    return tuple(specs)


def check_controls(pipe: Any, specs: tuple[ControlSpec, ...], options: Any, field: str) -> None:
    """Load the branches and make the maps now, so a model without a control is a 422, not a failed job."""
    if not specs:
        return
    try:
        pipe.controls(specs, options.resolve(pipe.config))
    except ValueError as err:  # OptionError, ControlMapError, CheckpointError
        raise st.reject(field, str(err)) from None
