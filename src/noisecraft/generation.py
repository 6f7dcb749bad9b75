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

from .audio import SpectrogramFormat
from .callbacks import ProgressBar, StepRecorder, chain
from .control_maps import read_map
from .images import (
    METADATA_KEY,
    load_image,
    make_grid,
    open_image,
    path_field,
    save_gif,
    save_png,
    upscale,
)
from .infotext import infotext, png_parameters
from .model import ControlSpec, SamplingOptions, shipped_models
from .model.adapters import find_adapter
from .model.settings import MAX_SIDE, MAX_STEPS
from .pipeline import GenerationRequest, Pipeline
from .sound_files import colourise, save_clip


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
    keep_paths: bool = False  # metadata names files by absolute path, not by name
    loras: list[tuple[str, float]] = field(default_factory=list)  # adapters by name, in the LoRA folder
    # one dict per control: map (a file), and optionally type, model, scale, window (model.ControlSpec)
    controls: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class PngTrust:
    """What a PNG from elsewhere may ask for: beyond these a flag must say so (its settings are input)."""

    allow_paths: bool = False  # read the model, init image and mask files it names
    max_steps: int = MAX_STEPS  # the command line passes a server's default limits
    max_pixels: int = MAX_SIDE * MAX_SIDE


def request_from_png(
    path: str | Path,
    flags: dict[str, Any] | None = None,
    trust: PngTrust = PngTrust(),
    meta: dict[str, Any] | None = None,
) -> tuple[FilesRequest, str]:
    """The request (and model) that made a PNG (ours, or A1111's parameters), read back from its
    metadata and checked like the command line; ``flags`` (FilesRequest fields, option fields,
    ``model``) given by the user win. ``meta``: the parameters already read (a WAV's, ``wav_parameters``)."""
    meta, flags = png_parameters(path) if meta is None else meta, dict(flags or {})
    try:
        options = SamplingOptions.from_metadata({**meta, **flags})  # the option fields of both
        asked = {key: _text(meta, key) for key in ("model", "init", "mask")}
        request = FilesRequest(
            prompts=[_text(meta, "prompt", required=True)],
            negative_prompt=_text(meta, "negative_prompt"),
            options=options,
            loras=[(str(a["name"]), float(a["scale"])) for a in meta.get("loras") or []],
            controls=_controls(meta),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{path}: incomplete generation parameters ({err})") from None
    _check_png_size(path, options, flags, trust)
    controls = _png_controls(path, request.controls, flags.get("controls") or [], trust.allow_paths)
    files = _png_files(path, asked, flags, trust.allow_paths)
    model = files.pop("model")
    request = replace(request, **{k: v for k, v in flags.items() if k in FILES_FLAGS}, **files)
    return replace(request, controls=controls), model


FILES_FLAGS = ("num", "show_steps", "progress", "keep_paths")  # what the user adds to a PNG


def _png_controls(
    path: str | Path, recorded: list[dict[str, Any]], given: list[dict[str, Any]], allow_paths: bool
) -> list[dict[str, Any]]:
    """The controls to run: the user's --control maps take the places of the PNG's, in order, each keeping
    the PNG's type, model, scale and window unless a --control-* flag gives one (a different number of maps:
    the user's alone); ValueError when the PNG's maps or control models are files it may not read."""
    if given:
        if len(given) != len(recorded):
            return given
        models = [c["model"] for c, mine in zip(recorded, given) if "model" in c and "model" not in mine]
        if models and not allow_paths:
            raise ValueError(
                f"{path} asks to read local files (control models {', '.join(map(repr, models))}): "
                "pass --control-model, or --allow-paths"
            )
        return [{**theirs, **mine} for theirs, mine in zip(recorded, given)]
    if any("map" not in c for c in recorded):
        raise ValueError(f"{path} names no file for its {len(recorded)} control map(s): pass --control MAP")
    if recorded and not allow_paths:
        maps = ", ".join(repr(c["map"]) for c in recorded)
        raise ValueError(
            f"{path} asks to read local files (control maps {maps}): pass --control, or --allow-paths"
        )
    return recorded


def _check_png_size(
    path: str | Path, options: SamplingOptions, flags: dict[str, Any], trust: PngTrust
) -> None:
    """ValueError when the PNG (not the user's flags) asks for more steps or pixels than a server gives."""
    if "steps" not in flags and options.steps is not None and options.steps > trust.max_steps:
        raise ValueError(
            f"{path} asks for {options.steps} steps, more than {trust.max_steps}: pass --steps to confirm"
        )
    width, height = options.width or 0, options.height or 0
    if not {"width", "height"} & set(flags) and width * height > trust.max_pixels:
        raise ValueError(
            f"{path} asks for {width}×{height} pixels, more than {trust.max_pixels}: "
            "pass --width and --height to confirm"
        )


def _png_files(
    path: str | Path, asked: dict[str, str | None], flags: dict[str, Any], allow_paths: bool
) -> dict[str, str | None]:
    """The model, init and mask to use: the user's flags, a shipped model the PNG names, or (only with
    ``allow_paths``) the local paths it names; ValueError saying what the PNG asks for otherwise."""
    chosen = {key: flags.get(key) for key in asked}
    if chosen["model"] is None and asked["model"] in shipped_models():
        chosen["model"] = asked["model"]
    wanted = {k: v for k, v in asked.items() if v and chosen[k] is None}
    if wanted and not allow_paths:
        what = ", ".join(f"{FILE_KINDS[k]} {v!r}" for k, v in wanted.items())
        options = " / ".join(f"--{k}" for k in wanted)
        raise ValueError(
            f"{path} asks to read local files ({what}): pass {options}, or --allow-paths to read them"
        )
    chosen.update(wanted)
    if chosen["model"] is None:
        raise ValueError(f"{path} names no model: pass --model")
    return chosen


FILE_KINDS = {"model": "model", "init": "init image", "mask": "mask"}


def _controls(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The controls a PNG records (their maps as files, where it names them): TypeError for anything but a
    list of objects whose map, if any, is a file name."""
    controls = meta.get("controls") or []
    if not isinstance(controls, list) or not all(isinstance(c, dict) and isinstance(c.get("map", ""), str)
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
    """Read the request's files and run it through the pipeline; the files' names (or with
    ``keep_paths`` their absolute paths) go into the metadata."""
    for name, scale in request.loras:  # the adapters a PNG was made with, found by name
        pipe.add_lora(find_adapter(name, pipe.lora_dir), scale)
    paint = colourise if pipe.config.audio is not None else None  # a sound model's steps: spectrograms
    recorder = StepRecorder(paint=paint) if request.show_steps else None
    progress = ProgressBar("sampling") if request.progress else None
    options = request.options.resolve(pipe.config)
    size = (options.width, options.height)
    init = None if request.init is None else load_image(request.init, pipe.config.channels, size)
    mask = None if request.mask is None else open_image(request.mask)  # any size: the pipeline fits it
    r = request
    controls = _control_specs(r.controls)
    job = GenerationRequest(r.prompts, r.negative_prompt, r.num, r.options, init, mask, controls=controls)
    images = pipe.run(job, chain(progress, recorder))
    for image in images:
        meta = image.info[METADATA_KEY]
        for key in ("init", "mask"):
            if getattr(request, key) is not None:
                meta[key] = path_field(getattr(request, key), request.keep_paths)
        if request.keep_paths and pipe.source and Path(pipe.source).is_absolute():
            meta["model"] = pipe.source
        for recorded, given in zip(meta.get("controls", []), r.controls):  # names unless keep_paths
            recorded["map"] = path_field(given["map"], request.keep_paths)
            if given.get("model") and Path(given["model"]).exists():
                recorded["model"] = path_field(given["model"], request.keep_paths)
    return images, recorder


def save_outputs(
    images: list[Image.Image],
    recorder: StepRecorder | None,
    out_dir: str | Path,
    attempts: int = 100,
    audio: SpectrogramFormat | None = None,
) -> list[Path]:
    """Write each image (with metadata), a grid when there are several, and step strips + GIFs; with
    ``audio`` (a sound model's spectrograms) each becomes a WAV and a spectrogram picture.

    Nothing in ``out_dir`` is overwritten, even by another run saving at the same moment: when a name
    is taken, all of this call's files get the first free suffix (``-1``, ``-2``, …), so an image, its
    strip and the grid stay together; each file is created exclusively, and a name taken in between
    sends the whole set on to the next free suffix.
    """
    out_dir = Path(out_dir)
    metas = [image.info[METADATA_KEY] for image in images]
    stems = [f"{i:03d}-{_slug(meta['prompt'])}-s{meta['seed']}" for i, meta in enumerate(metas)]
    names = [f"{stem}{extra}" for stem in stems for extra in _extras(recorder is not None, audio is not None)]
    names += ["grid.png"] if len(images) > 1 else []
    start = 0
    for _ in range(attempts):
        n = free_suffix(out_dir, names, start)
        written: list[Path] = []
        try:
            _write_set(images, recorder, out_dir, stems, _suffix(n), written, audio)
            return written
        except FileExistsError:  # another writer took a name after free_suffix looked
            for path in written:
                path.unlink(missing_ok=True)
            start = n + 1
    raise FileExistsError(f"{out_dir}: no free file names after {attempts} tries")


def _write_set(
    images, recorder, out_dir: Path, stems: list[str], suffix: str, written: list[Path], audio=None
) -> None:
    """Create every file of one call with ``suffix`` (exclusively), appending each to ``written``."""
    for i, (image, stem) in enumerate(zip(images, stems)):
        meta, path = image.info[METADATA_KEY], out_dir / f"{stem}{suffix}.png"
        if audio is not None:  # a WAV and its spectrogram picture
            save_clip(image, path, audio, meta, infotext(meta), written, exclusive=True)
        else:
            written.append(save_png(image, path, meta, infotext(meta), exclusive=True))
        if recorder is not None:
            steps = out_dir / f"{stem}-steps{suffix}"
            written.append(save_png(recorder.strip(i), steps.with_suffix(".png"), exclusive=True))
            written.append(save_gif(recorder.animation(i), steps.with_suffix(".gif"), exclusive=True))
    if len(images) > 1:
        scale = max(1, 128 // images[0].width)
        grid = make_grid([upscale(colourise(im) if audio else im, scale) for im in images])
        written.append(save_png(grid, out_dir / f"grid{suffix}.png", exclusive=True))


def _extras(with_steps: bool, sound: bool = False) -> list[str]:
    return [*([".wav"] if sound else []), ".png", *(["-steps.png", "-steps.gif"] if with_steps else [])]


def _suffix(n: int) -> str:
    return f"-{n}" if n else ""


def free_suffix(folder: Path, names: list[str], start: int = 0) -> int:
    """The first n ≥ ``start`` such that no ``stem-n.ext`` of ``names`` is in ``folder`` (0: no suffix)."""
    n = start
    while any((folder / name).with_stem(Path(name).stem + _suffix(n)).exists() for name in names):
        n += 1
    return n


def generate_to_files(pipe: Pipeline, request: FilesRequest, out_dir: str | Path) -> list[Path]:
    """Generate as ``request`` says and save everything into ``out_dir``; returns the written paths."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)  # a bad folder fails now, not after sampling
    images, recorder = run(pipe, request)
    return save_outputs(images, recorder, out_dir, audio=pipe.config.audio)


def check_model_matches(pipe: Pipeline, png_meta_weights: str | None) -> None:
    """Warn when regenerating a PNG with other weights than the ones that made it (``png_meta_weights``:
    our hash, or its first 10 digits as A1111's "Model hash" carries it)."""
    if png_meta_weights and not pipe.weights_hash.startswith(str(png_meta_weights)):
        warnings.warn(
            f"the file was made with weights {png_meta_weights}, this model has {pipe.weights_hash}: "
            "the output will differ",
            stacklevel=2,
        )
