"""Training configuration: nested dataclasses filled from a TOML recipe plus ``--set a.b=value`` overrides.

Every value is checked against its field's type on the way in, so a typo or a wrong type fails
before any work with one line naming the key and what it accepts. Choices are ``Literal`` types
(their error lists the accepted values); open-ended component settings (``model.net``,
``text.encoder``, ``data.options``) are dicts checked later against the component's own config.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from ..model import OptionError, SamplingOptions
from .recipe_checks import check_adapter, check_distill, check_frozen_net, check_upscaler

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, under its PyPI name
    import tomli as tomllib

MODEL_KINDS = ("mlp", "unet", "dit", "wave_unet")
# Keys that may differ between a checkpoint and the run resuming it: they change neither the
# state nor the random stream (or, for steps and device, change them on purpose).
RESUMABLE_CHANGES = (
    "steps", "device", "threads", "log.", "sampling.", "checkpoint.",
    "data.workers", "data.prefetch", "data.cache",  # how batches are made, not which
)  # fmt: skip


@dataclass
class ModelConfig:
    kind: Literal["mlp", "unet", "dit", "wave_unet"] = "mlp"  # the network, from a registry of components
    net: dict[str, Any] = field(default_factory=dict)  # fields of the network's config dataclass
    precond: Literal["edm", "consistency", "flow", "vp_eps", "vp_v"] = "edm"  # how raw net output becomes x̂0
    sigma_data: float = 0.5  # EDM's σ_data: the data's standard deviation
    autoencoder: str = ""  # a saved autoencoder component: train in its latent space ("" = pixels)
    latent_scale: float = 1.0  # latents are multiplied by this (Rombach et al. 2022's scale factor)
    init: str = ""  # start from trained weights: a shipped model name or a folder with net/ ("" = fresh)
    init_new: tuple[str, ...] = ()  # names of modules model.init may lack (a grown net): they start fresh
    # An upscaler (cascaded diffusion, model/upscale.py): the net also sees each image shrunk to this side
    # (noised by σ up to upscale_noise) and enlarged back; upscale_base (a shipped name or a model folder)
    # makes the low-resolution pictures at generation and is exported with it as base/. 0: not an upscaler.
    upscale_from: int = 0
    upscale_noise: float = 0.0
    upscale_base: str = ""
    # Train only the text encoder (a builtin one, or MiniLM's low-rank branches: text.encoder.lora_rank)
    # against model.init's network, frozen: what the network draws stays, what it hears changes.
    frozen_net: bool = False


@dataclass
class TextConfig:
    # builtin trains along; minilm is frozen and cached unless text.encoder.lora_rank > 0 (then it trains)
    kind: Literal["none", "builtin", "minilm"] = "none"
    encoder: dict[str, Any] = field(default_factory=dict)  # fields of the encoder's config dataclass
    cond_dropout: float = 0.1  # P(caption → "") per example, so the model learns guidance's u


@dataclass
class DataConfig:
    name: str = "toy2d"  # a dataset of noisecraft.data: toy2d, shapes, emoji, mnist, folder, shards
    options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the dataset
    workers: int = 0  # processes making batches ahead (0 = the training process); the same batches for any
    prefetch: int = 2  # batches each worker keeps ready
    # Render shapes/emoji/mnist once into a memory-mapped file: "shared" is reused by every run
    # ($NOISECRAFT_CACHE/data or ~/.cache/noisecraft/data), "run" lives in the run folder's data-cache/.
    cache: Literal["off", "shared", "run"] = "off"


@dataclass
class OptimConfig:
    lr: float = 1e-3  # peak learning rate of AdamW (Loshchilov & Hutter 2019)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    batch_size: int = 256  # global batch per optimizer step, over all processes and micro-batches
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = off)
    warmup_steps: int = 0  # linear warm-up from 0 to lr
    lr_schedule: Literal["cosine", "constant"] = "cosine"  # after warm-up
    min_lr_ratio: float = 0.0  # the cosine ends at lr·min_lr_ratio
    max_nonfinite: int = 20  # this many non-finite losses in a row stop the run


@dataclass
class ScheduleConfig:
    """The training σ distribution (see noisecraft.schedules)."""

    kind: Literal["edm_lognormal", "vp_uniform_timestep", "logit_normal", "karras_grid"] = "edm_lognormal"
    p_mean: float = -1.2  # edm_lognormal: ln σ ~ N(p_mean, p_std²)
    p_std: float = 1.2
    high_fraction: float = 0.0  # edm_lognormal: this fraction of draws is set to high_sigma (0 = off),
    high_sigma: float = 80.0  # where the prompt alone decides the layout (the samplers' σ_max)
    beta_schedule: Literal["linear", "scaled_linear", "cosine"] = "linear"  # vp_uniform_timestep
    num_train_timesteps: int = 1000
    mean: float = 0.0  # logit_normal: t = sigmoid(N(mean, std²)), then shifted
    std: float = 1.0
    shift: float = 1.0
    grid_steps: int = (
        18  # karras_grid: σ uniform over points 1 … N−1 of a Karras grid of N points (Song 2023)
    )
    sigma_min: float = 0.002  # karras_grid: the grid's ends and ρ
    sigma_max: float = 80.0
    rho: float = 7.0


@dataclass
class DistillConfig:
    """Consistency distillation (Song et al. 2023) from a frozen teacher; off while teacher is ""."""

    teacher: str = ""  # a shipped model name or a saved model folder
    solver: Literal["heun", "euler"] = "heun"  # the teacher's ODE step from σ_{n+1} to σ_n
    guidance: float = 1.0  # the classifier-free guidance scale distilled in (1 = none)
    target_decay: float = 0.95  # μ of the target network θ⁻ ← μθ⁻ + (1 − μ)θ (0: the student, no grad)
    huber_c: float = 0.0  # pseudo-Huber c (Song & Dhariwal 2024); 0: 0.00054·sqrt(dimensions)


@dataclass
class EMAConfig:
    std: float = 0.10  # σ_rel of the power-function EMA (Karras et al. 2024); 0 = no EMA


@dataclass
class LossConfig:
    kind: Literal["dsm", "flow_matching"] = "dsm"  # denoising score matching or rectified-flow loss
    weighting: Literal["edm", "snr", "min_snr", "v", "flow", "uniform"] = "edm"  # dsm's w(σ)
    min_snr_gamma: float = 5.0
    mean_sigma: float = 0.0  # dsm: weight the error's spatial mean by 1/(1 + (σ/mean_sigma)²); 0 = off


@dataclass
class SamplingConfig:
    every: int = 0  # write a sample grid every this many steps, and at the end (0 = never)
    prompts: tuple[str, ...] = ("",)  # one grid row per prompt
    seeds: tuple[int, ...] = (0, 1, 2, 3)  # one grid column per seed
    sampler: str = "euler"
    steps: int = 32
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0  # Karras et al. 2022's schedule exponent
    schedule: str = "karras"  # σ spacing: karras or exponential
    guidance: float = 1.0  # classifier-free guidance scale (1 = off)
    points: int = 2000  # 2-D data: points drawn per seed for the scatter plot

    def options(self) -> SamplingOptions:
        """The options previews sample with, checked; the exported model takes them as its defaults."""
        try:
            return SamplingOptions(
                steps=self.steps, sampler=self.sampler, guidance=self.guidance,
                sigma_min=self.sigma_min, sigma_max=self.sigma_max, rho=self.rho, schedule=self.schedule,
            )  # fmt: skip
        except OptionError as err:
            raise ValueError(f"sampling.{err}") from None


@dataclass
class CheckpointConfig:
    every: int = 500  # save every this many steps, and at the end
    keep: int = 3  # the newest this many checkpoints are kept


@dataclass
class AdapterConfig:
    """Train low-rank adapters (LoRA, Hu et al. 2021) on a frozen model.init instead of the model."""

    kind: Literal["none", "lora"] = "none"
    rank: int = 4  # r: A is [r, in], B is [out, r]
    alpha: float = 0.0  # the update is scaled by alpha / rank; 0: alpha = rank (scale 1)
    targets: tuple[str, ...] = ("attention",)  # attention (q/k/v/out), mlp (transformer MLPs), conv
    format: Literal["kohya", "diffusers"] = "kohya"  # the tensor names of the saved file


@dataclass
class LogConfig:
    every: int = 10  # metrics line every this many steps
    tensorboard: bool = True
    progress: bool = True  # tqdm progress bar


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps in the whole run
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto: CUDA, then MPS, else the CPU
    precision: Literal["auto", "fp32", "bf16", "fp64"] = "auto"  # auto: bf16 autocast on CUDA, else fp32
    threads: int = 0  # CPU threads for torch (0 = torch's default); tiny models run fastest on 1
    model: ModelConfig = field(default_factory=ModelConfig)
    text: TextConfig = field(default_factory=TextConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)

    def __post_init__(self) -> None:
        check_ranges(self)


# ----------------------------------------------------------------------------------------------
# Typed construction from plain dicts.


def _type_name(tp: Any) -> str:
    """A readable name for a field type: float, a tuple of int, one of ['a', 'b'], …"""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return f"one of {list(args)}"
    if origin is tuple:
        inner = _type_name(args[0])
        return f"a list of {inner}" if args[-1] is Ellipsis else f"a list of {len(args)} × {inner}"
    if origin is dict:
        return "a table (dict)"
    if dataclasses.is_dataclass(tp):
        return f"a table with keys {[f.name for f in dataclasses.fields(tp)]}"
    return getattr(tp, "__name__", str(tp))


def check_value(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` (int → float, list → tuple), or raise ValueError naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        for option in args:
            try:
                return check_value(value, option, key)
            except ValueError:
                continue
    elif origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise ValueError(f"{key}: {value!r} is not accepted; accepted values: {list(args)}")
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return from_dict(tp, value, key)
    elif origin is tuple and isinstance(value, list | tuple):
        items = args[:1] * len(value) if args[-1] is Ellipsis else args
        if len(items) == len(value):
            return tuple(check_value(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, items)))
    elif origin is dict and isinstance(value, dict):
        return dict(value)
    elif tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    elif tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif tp in (bool, str) and isinstance(value, tp):
        return value
    raise ValueError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (nested) dict, checking every key and value's type."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in names:
            where = f"in [{prefix}]" if prefix else "at the top level"
            raise ValueError(f"unknown key {path!r} {where}; accepted keys: {names}")
        kwargs[key] = check_value(value, hints[key], path)
    try:
        return cls(**kwargs)
    except TypeError as err:  # e.g. a component config's required field was left out
        raise ValueError(f"{prefix or cls.__name__}: {err}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass as plain JSON/TOML-friendly values (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


# ----------------------------------------------------------------------------------------------
# Overrides, files, checks.


def _field_type(cls: type, path: list[str]) -> Any:
    """The declared type at a dotted path (Any inside dict fields); ValueError for an unknown key."""
    tp: Any = cls
    for depth, name in enumerate(path):
        if not dataclasses.is_dataclass(tp):
            return Any  # inside a free-form dict: checked against the component later
        hints = typing.get_type_hints(tp)
        if name not in hints:
            where = ".".join(path[:depth]) or "the top level"
            raise ValueError(f"unknown key {'.'.join(path)!r} in {where}; accepted keys: {sorted(hints)}")
        tp = hints[name]
    return tp


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` → (["a", "b"], value); the value is read as TOML (2e-4, true, [1, 2], "x")."""
    key, sep, raw = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ValueError(f"override {text!r} must look like section.key=value (e.g. optim.lr=2e-4)")
    _field_type(TrainConfig, path)  # fails early on an unknown key
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word: a string
    if _field_type(TrainConfig, path) is str and not isinstance(value, str):
        value = raw.strip()  # --set data.name=123 means the string "123"
    return path, value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to a raw (nested dict) config, in order; returns a new dict."""
    values = _deep_copy(values)
    for text in overrides:
        path, value = parse_override(text)
        node = values
        for name in path[:-1]:
            child = node.setdefault(name, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {text!r}: {name!r} is a value, not a table")
            node = child
        node[path[-1]] = value
    return values


def _deep_copy(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in values.items()}


def recipe_folders() -> list[Path]:
    """Where recipe names are looked up: ./configs, then the source checkout's configs/."""
    return [Path("configs"), Path(__file__).resolve().parents[3] / "configs"]


def resolve_recipe(name_or_path: str | Path) -> Path:
    """A recipe file path, or the name of one in configs/ (``toy2d`` → configs/toy2d.toml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for folder in recipe_folders():
        candidate = folder / f"{name_or_path}.toml"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for folder in recipe_folders() if folder.is_dir() for p in folder.glob("*.toml")})
    raise ValueError(f"no config file or recipe named {str(name_or_path)!r}; recipes: {known}")


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """A TrainConfig from a TOML recipe (or the defaults) with ``a.b=value`` overrides applied."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r} does not exist")
        try:
            values = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not valid TOML ({err})") from None
    return from_dict(TrainConfig, apply_overrides(values, list(overrides)))


def check_ranges(c: TrainConfig) -> None:
    """Value checks the types cannot express; one ValueError naming the key."""
    positive = {
        "steps": c.steps,
        "optim.lr": c.optim.lr,
        "optim.batch_size": c.optim.batch_size,
        "optim.grad_accum": c.optim.grad_accum,
        "optim.max_nonfinite": c.optim.max_nonfinite,
        "model.sigma_data": c.model.sigma_data,
        "model.latent_scale": c.model.latent_scale,
        "checkpoint.every": c.checkpoint.every,
        "checkpoint.keep": c.checkpoint.keep,
        "log.every": c.log.every,
        "sampling.points": c.sampling.points,
        "schedule.high_sigma": c.schedule.high_sigma,
        "data.prefetch": c.data.prefetch,
    }
    for key, value in positive.items():
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{key} must be positive, got {value}")
    non_negative = {
        "threads": c.threads,
        "data.workers": c.data.workers,
        "optim.weight_decay": c.optim.weight_decay,
        "optim.grad_clip": c.optim.grad_clip,
        "optim.warmup_steps": c.optim.warmup_steps,
        "sampling.every": c.sampling.every,
        "loss.mean_sigma": c.loss.mean_sigma,
    }
    for key, value in non_negative.items():
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{key} must be >= 0, got {value}")
    if c.optim.batch_size % c.optim.grad_accum:
        raise ValueError(
            f"optim.batch_size ({c.optim.batch_size}) must be divisible by optim.grad_accum "
            f"({c.optim.grad_accum})"
        )
    if not 0.0 <= c.schedule.high_fraction < 1.0:
        raise ValueError(f"schedule.high_fraction must be in [0, 1), got {c.schedule.high_fraction}")
    if c.schedule.high_fraction > 0 and c.schedule.kind != "edm_lognormal":
        kind = c.schedule.kind
        raise ValueError(f"schedule.high_fraction applies to kind = 'edm_lognormal' only, not {kind!r}")
    check_distill(c)
    if c.loss.mean_sigma > 0 and c.loss.kind != "dsm":
        raise ValueError(f"loss.mean_sigma applies to loss.kind = 'dsm' only, not {c.loss.kind!r}")
    if not 0.0 <= c.text.cond_dropout < 1.0:
        raise ValueError(f"text.cond_dropout must be in [0, 1), got {c.text.cond_dropout}")
    if not 0.0 <= c.ema.std < 0.28:  # σ_rel of a power profile peaks at 0.2887 (γ = 0)
        raise ValueError(f"ema.std must be in [0, 0.28) (σ_rel; 0 = off), got {c.ema.std}")
    if not 0.0 <= c.optim.min_lr_ratio <= 1.0:
        raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {c.optim.min_lr_ratio}")
    if not all(0.0 <= b < 1.0 for b in c.optim.betas):
        raise ValueError(f"optim.betas must be in [0, 1), got {list(c.optim.betas)}")
    c.sampling.options()
    check_adapter(c)
    check_upscaler(c)
    check_frozen_net(c)
    if not c.sampling.prompts or not c.sampling.seeds:
        raise ValueError("sampling.prompts and sampling.seeds must not be empty")


def resume_conflicts(saved: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts, except those a resume may change."""
    keys = sorted(set(saved) | set(now))
    out = []
    for key in keys:
        path = f"{prefix}{key}"
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += resume_conflicts(a, b, f"{path}.")
        elif a != b and not any(path == r or path.startswith(r) for r in RESUMABLE_CHANGES):
            out.append(path)
    return out
