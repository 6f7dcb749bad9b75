"""Generate images to files: PNGs with their parameters, a grid, step-by-step strips and GIFs.

This is what ``noisecraft generate`` does once its arguments are parsed; it is plain library code so
that scripts can do the same.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from .callbacks import ProgressBar, StepRecorder, chain
from .control_maps import read_map
from .images import METADATA_KEY, load_image, make_grid, save_gif, save_png, upscale
from .infotext import infotext, png_parameters
from .model import ControlSpec, SamplingOptions
from .pipeline import GenerationRequest, Pipeline


@dataclass
class FilesRequest:
    """One ``noisecraft generate`` call: the job, with its init image and mask as files, and what to write."""

    prompts: list[str] = field(default_factory=list)
    negative_prompt: str | None = None
    num: int = 1
    options: SamplingOptions = field(default_factory=SamplingOptions)
    init: str | None = None  # image-to-image source file
    mask: str | None = None  # inpainting mask file: white = repaint
    show_steps: bool = False
    progress: bool = True
    # one dict per control: map (a file), and optionally type, model, scale, window (model.ControlSpec)
    controls: list[dict[str, Any]] = field(default_factory=list)


def request_from_png(
    path: str | Path, overrides: FilesRequest | None = None
) -> tuple[FilesRequest, str]:
    """The request (and model name) that made a PNG, read back from its metadata (ours, or A1111's)."""
    meta = png_parameters(path)
    try:
        request = FilesRequest(
            prompts=[_text(meta, "prompt", required=True)],
            negative_prompt=_text(meta, "negative_prompt"),
            options=SamplingOptions.from_metadata(meta),
            init=_text(meta, "init"),
            mask=_text(meta, "mask"),
            controls=_controls(meta),
        )
        model = _text(meta, "model") or ""
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: incomplete generation parameters ({err})") from None
    if overrides is not None:
        request = replace(request, show_steps=overrides.show_steps, progress=overrides.progress)
        if overrides.controls:
            request = replace(request, controls=overrides.controls)
    return request, model


def _controls(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The controls a PNG records (their maps as files): TypeError for anything but a list of objects."""
    controls = meta.get("controls") or []
    if not isinstance(controls, list) or not all(isinstance(c, dict) and isinstance(c.get("map"), str)
                                                  for c in controls):  # fmt: skip
        raise TypeError(f"controls must be a list of objects with a map file, got {controls!r}")
    keys = ("map", "type", "model", "scale", "window")
    return [{k: c[k] for k in keys if c.get(k) is not None} for c in controls]


def _control_specs(controls: list[dict[str, Any]]) -> tuple[ControlSpec, ...]:
    """ControlSpecs of the request's controls (the maps read now: a bad file fails before sampling)."""
    specs = []
    for c in controls:
        window = tuple(c.get("window", (0.0, 1.0)))
        specs.append(ControlSpec(read_map(c["map"]), c.get("type", "layout"), c.get("model"),
                                 c.get("scale", 1.0), window))  # fmt: skip
    return tuple(specs)


def _text(meta: dict[str, Any], key: str, required: bool = False) -> str | None:
    """An optional text field of PNG metadata; TypeError when it holds anything but a string."""
    value = meta[key] if required else meta.get(key)
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{key} must be a string, got {value!r}")
    return value


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "image"


def run(pipe: Pipeline, request: FilesRequest) -> tuple[list[Image.Image], StepRecorder | None]:
    """Read the request's files and run it through the pipeline; the files' paths go into the metadata."""
    recorder = StepRecorder() if request.show_steps else None
    progress = ProgressBar("sampling") if request.progress else None
    options = request.options.resolve(pipe.config)
    size = (options.width, options.height)
    init = None if request.init is None else load_image(request.init, pipe.config.channels, size)
    mask = None if request.mask is None else (load_image(request.mask, 1) > 0).float()
    r = request
    controls = _control_specs(r.controls)
    job = GenerationRequest(r.prompts, r.negative_prompt, r.num, r.options, init, mask, controls=controls)
    images = pipe.run(job, chain(progress, recorder))
    for image in images:
        for key in ("init", "mask"):
            if getattr(request, key) is not None:
                image.info[METADATA_KEY][key] = str(Path(getattr(request, key)).resolve())
        for recorded, given in zip(image.info[METADATA_KEY].get("controls", []), r.controls):
            recorded["map"] = str(Path(given["map"]).resolve())
            if given.get("model") and Path(given["model"]).exists():  # a path: absolute, for --from-png
                recorded["model"] = str(Path(given["model"]).resolve())
    return images, recorder


def save_outputs(images: list[Image.Image], recorder: StepRecorder | None, out_dir: str | Path) -> list[Path]:
    """Write each image (with metadata), a grid when there are several, and step strips + GIFs.

    Nothing already in ``out_dir`` is overwritten: when a name is taken, all of this call's files
    get the first free suffix (``-1``, ``-2``, …), so an image, its strip and the grid stay together.
    """
    out_dir = Path(out_dir)
    metas = [image.info[METADATA_KEY] for image in images]
    stems = [f"{i:03d}-{_slug(meta['prompt'])}-s{meta['seed']}" for i, meta in enumerate(metas)]
    names = [f"{stem}{extra}" for stem in stems for extra in _extras(recorder is not None)]
    names += ["grid.png"] if len(images) > 1 else []
    suffix = free_suffix(out_dir, names)
    paths = []
    for i, (image, meta, stem) in enumerate(zip(images, metas, stems)):
        paths.append(save_png(image, out_dir / f"{stem}{suffix}.png", meta, infotext(meta)))
        if recorder is not None:
            paths.append(save_png(recorder.strip(i), out_dir / f"{stem}-steps{suffix}.png"))
            paths.append(save_gif(recorder.animation(i), out_dir / f"{stem}-steps{suffix}.gif"))
    if len(images) > 1:
        scale = max(1, 128 // images[0].width)
        grid = make_grid([upscale(im, scale) for im in images])
        paths.append(save_png(grid, out_dir / f"grid{suffix}.png"))
    return paths


def _extras(with_steps: bool) -> list[str]:
    return [".png", "-steps.png", "-steps.gif"] if with_steps else [".png"]


def free_suffix(folder: Path, names: list[str]) -> str:
    """'' when none of ``names`` (``stem.ext``) is in ``folder``, else the first '-N' that frees them all."""
    n = 0
    while True:
        suffix = f"-{n}" if n else ""
        if not any((folder / name).with_stem(Path(name).stem + suffix).exists() for name in names):
            return suffix
        n += 1


def generate_to_files(pipe: Pipeline, request: FilesRequest, out_dir: str | Path) -> list[Path]:
    """Generate as ``request`` says and save everything into ``out_dir``; returns the written paths."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)  # a bad folder fails now, not after sampling
    images, recorder = run(pipe, request)
    return save_outputs(images, recorder, out_dir)


def check_model_matches(pipe: Pipeline, png_meta_weights: str | None) -> None:
    """Warn when regenerating a PNG with other weights than the ones that made it (``png_meta_weights``:
    our hash, or its first 10 digits as A1111's "Model hash" carries it)."""
    if png_meta_weights and not pipe.weights_hash.startswith(str(png_meta_weights)):
        warnings.warn(
            f"the PNG was made with weights {png_meta_weights}, this model has {pipe.weights_hash}: "
            "the image will differ",
            stacklevel=2,
        )
