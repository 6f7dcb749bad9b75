"""The trainer: builds a run from a TrainConfig, saves and resumes it exactly, and exports the model.

The loop itself (one optimizer step, logging, checkpoint cadence) is in ``loop.py``. Everything a
step depends on lives in ``Trainer.state`` + model/EMA/optimizer tensors + one CPU generator, and
all of it goes into the checkpoint, so a resumed run continues bit for bit (on CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import IterableDataset

from ..components import save_component
from ..data import dataset_audio
from ..devices import resolve_dtype
from ..model import LatentSpace, ModelSettings, write_settings
from ..model.folder import find_model
from ..model.options import MODEL_DEFAULTS
from ..model.upscale import copy_base
from .adapter import attach_adapters, check_text_as_init, export_adapter, freeze_text_from, text_from
from .build import (
    DiffusionObjective,
    build_denoiser,
    build_net,
    build_optimizer,
    build_text_encoder,
    init_from,
    parent_record,
    text_dim_of,
)
from .checkpoint import (
    flatten_optimizer,
    latest_checkpoint,
    list_checkpoints,
    nothing_to_resume,
    restore_rng,
    rng_tensors,
    save_checkpoint,
    unflatten_optimizer,
)
from .config import TrainConfig, from_dict, resume_conflicts, to_dict
from .data import Dataset, make_batches, open_training_dataset
from .distill import ConsistencyObjective, load_teacher
from .distributed import barrier, init_distributed
from .ema import PowerEMA


@dataclass
class TrainState:
    """The counters a checkpoint stores beside the tensors."""

    step: int = 0  # optimizer steps taken, skipped (non-finite) ones included
    batches: int = 0  # global micro-batches consumed: the data position
    nonfinite_total: int = 0
    nonfinite_streak: int = 0
    train_seconds: float = dataclasses.field(default=0.0, compare=False)  # wall time in steps, all runs


def resolve_precision(choice: str, device: torch.device) -> tuple[torch.dtype, bool]:
    """(parameter dtype, bf16 autocast?): auto is bf16 autocast on CUDA and fp32 on CPU."""
    if choice == "bf16" and device.type != "cuda":
        raise ValueError("precision: 'bf16' needs a CUDA device (CPUs here have no bf16 units); use fp32")
    if choice == "fp64":
        return resolve_dtype(torch.float64, device), False
    return torch.float32, choice == "bf16" or (choice == "auto" and device.type == "cuda")


class Trainer:
    """One training run in ``out_dir``: checkpoints/, metrics.jsonl, tensorboard/, samples/, model/."""

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | Path,
        *,
        resume: bool = False,
        dataset: Dataset | IterableDataset | None = None,
    ):
        self.config, self.out = config, Path(out_dir)
        self.checkpoints = self.out / "checkpoints"
        if not resume and list_checkpoints(self.checkpoints):
            raise ValueError(
                f"{self.out} already holds checkpoints: pass --resume to continue, or another --out"
            )
        if config.model.upscale_base:
            find_model(config.model.upscale_base)  # before hours of training, not at the export
        self.dist, self.device = init_distributed(config.device)
        self.dtype, self.bf16 = resolve_precision(config.precision, self.device)
        d = config.data
        if dataset is None:
            dataset = open_training_dataset(d, self.out, self.dist.is_main)
        self.dataset = dataset
        self.batches = make_batches(
            self.dataset, self._micro_batch_size(), config.seed, self.dist.rank, self.dist.world_size,
            d.workers, d.prefetch, pin=self.device.type == "cuda",
        )  # fmt: skip
        self._build_model(fresh=not resume)
        self.generator = torch.Generator().manual_seed(config.seed)  # σ, noise, dropout: CPU on any device
        self.state = TrainState()
        self.resumed_from = self._resume() if resume else None
        self.model = self.objective
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.objective, device_ids=ids)

    def _micro_batch_size(self) -> int:
        """The global micro-batch; every process takes an equal share of it."""
        o, world = self.config.optim, self.dist.world_size
        micro = o.batch_size // o.grad_accum
        if micro % world:
            raise ValueError(
                f"optim.batch_size / optim.grad_accum = {micro} must be divisible by the {world} processes"
            )
        return micro

    def _build_model(self, fresh: bool) -> None:
        """Networks, EMA and optimizer; a fresh run with model.init starts from those weights (a resumed
        one takes them from its checkpoint, so the model.init folder need not exist any more)."""
        c = self.config
        torch.manual_seed(c.seed)  # the same initial weights in every process and every rerun
        # a frozen encoder embeds the dataset's captions once, up front (listing them can take seconds)
        captions = (
            getattr(self.dataset, "captions", []) if c.text.kind == "minilm" or c.distill.teacher else []
        )
        if c.distill.teacher:  # the teacher's text encoder, frozen, conditions student and teacher alike
            from ..text import CachedTextEncoder

            teacher, text = load_teacher(c.distill.teacher)
            trainable_text = None
            self.frozen_text = (
                None if text is None else CachedTextEncoder(text, list(captions), fallback=True)
            )
        else:
            trainable_text, self.frozen_text = build_text_encoder(c, captions, self.device)
        net = build_net(c, text_dim_of(trainable_text, self.frozen_text))
        self.parent = None  # the training.json of the model.init source: the model's lineage
        if c.model.init and fresh:  # before the EMA copy is taken, so the average starts from it too
            init_from(net, c.model.init, c.model.init_new)
            self.parent = parent_record(c.model.init)
        if c.model.frozen_net:  # only the text encoder trains; a resumed run's comes from its checkpoint
            net.requires_grad_(False)
            if fresh:
                text_from(trainable_text, c.model.init)
        if c.adapter.kind == "lora":  # only the adapters train; a resumed run's come from its checkpoint
            attach_adapters(net, c.adapter)
            if fresh:  # a resumed run's encoder comes from its checkpoint
                check_text_as_init(c.text.kind, c.text.encoder, c.model.init)
                freeze_text_from(trainable_text, c.model.init)
            if trainable_text is not None:
                trainable_text.requires_grad_(False)
        if c.distill.teacher:
            uncond = self.frozen_text([""]) if self.frozen_text is not None else None
            objective = ConsistencyObjective(build_denoiser(net, c), teacher, uncond, c)
        else:
            objective = DiffusionObjective(build_denoiser(net, c), trainable_text, c)
        self.objective = objective.to(self.device, self.dtype).train()
        try:
            self.latent = LatentSpace.from_folder(c.model.autoencoder, c.model.latent_scale).to(self.device)
        except ValueError as err:
            raise ValueError(f"model.autoencoder: {err}") from None
        self.ema = PowerEMA(self.objective, c.ema.std) if c.ema.std > 0 else None
        self.params = [p for p in self.objective.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.params, c.optim, self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def averaged(self) -> torch.nn.Module:
        """The weights to sample and export: the EMA copy, or the live weights without EMA."""
        return self.ema.module if self.ema is not None else self.objective

    # ------------------------------------------------------------------------------------------
    # Checkpoints.

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"model/{k}": v for k, v in self.objective.state_dict().items()}
        if self.ema is not None:
            tensors.update({f"ema/{k}": v for k, v in self.ema.state_dict().items()})
        optim_tensors, _ = flatten_optimizer(self.optimizer)
        return {**tensors, **optim_tensors, **rng_tensors(self.generator)}

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0), then wait for every process."""
        path, positions = None, self.batches.positions(self.device)  # a collective: every process
        if self.dist.is_main:
            _, optim_meta = flatten_optimizer(self.optimizer)
            meta = {
                "config": to_dict(self.config),
                "state": dataclasses.asdict(self.state),
                "optimizer": optim_meta,
                "ema": {"std": self.config.ema.std, "gamma": self.ema.gamma if self.ema else None},
                "world_size": self.dist.world_size,
                "data": positions,  # streamed data: each rank's (epoch, consumed); else None
            }
            if self.parent is not None:
                meta["parent"] = self.parent
            path = save_checkpoint(
                self.checkpoints, self.state.step, self.state_tensors(), meta, self.config.checkpoint.keep
            )
        barrier()
        return path

    def _resume(self) -> Path:
        found = latest_checkpoint(self.checkpoints)
        if found is None:
            raise ValueError(nothing_to_resume(self.checkpoints, self.out))
        path, tensors, meta = found
        try:
            check_resumable(meta["config"], to_dict(self.config), path)
            self._restore(path, tensors, meta)
        except (KeyError, TypeError, AttributeError, IndexError, RuntimeError) as err:
            detail = " ".join(f"{type(err).__name__}: {err}".split())  # torch's messages span lines
            raise ValueError(f"--resume: {path} is damaged or not from this code ({detail})") from None
        return path

    def _restore(self, path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Put back the model, EMA, optimizer, RNG, counters and data position a checkpoint holds."""
        self.objective.load_state_dict(_section(tensors, "model/"))
        if self.ema is not None:
            self.ema.load_state_dict(_section(tensors, "ema/"))
        self.optimizer.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"]))
        restore_rng(tensors, self.generator)
        try:
            self.state = from_dict(TrainState, meta["state"], "state")
        except ValueError as err:  # a counter of the wrong type, or an unknown one
            raise ValueError(f"--resume: {path}: {err}") from None
        self.batches.restore(meta.get("data"))
        self.parent = meta.get("parent")
        if self.parent is None and self.config.model.init:  # a checkpoint from before lineages were kept
            try:
                self.parent = parent_record(self.config.model.init)
            except ValueError:  # the model.init folder is gone: keep at least its name
                self.parent = {"source": self.config.model.init}

    def export(self, folder: str | Path | None = None) -> Path:
        """Save the averaged network (and a trained text encoder) as components, plus training.json."""
        folder = Path(folder) if folder is not None else self.out / "model"
        model = self.averaged
        if self.config.adapter.kind != "none":
            return self._export_adapter(folder)
        save_component(model.denoiser.net, folder / "net")
        if model.text_encoder is not None:
            save_component(model.text_encoder, folder / "text_encoder")
        elif self.frozen_text is not None:
            save_component(self.frozen_text.encoder, folder / "text_encoder")
        c = self.config.model
        record: dict[str, Any] = {
            "precond": c.precond,
            "sigma_data": c.sigma_data,
            "autoencoder": c.autoencoder,
            "latent_scale": c.latent_scale,
            "step": self.state.step,
            "images_seen": self.state.step * self.config.optim.batch_size,
            "train_seconds": round(self.state.train_seconds, 1),
            "config": to_dict(self.config),
        }
        if self.parent is not None:
            record["parent"] = self.parent  # the run model.init started from, and its own parent, …
        (folder / "training.json").write_text(json.dumps(record, indent=1) + "\n")
        image_shape = self._image_shape(model.denoiser.net)
        if image_shape is not None:
            if self.latent.autoencoder is not None:
                save_component(self.latent.autoencoder, folder / "autoencoder")
            write_settings(model_settings(self.config, self.out.name, image_shape), folder)
        if c.upscale_from:  # a cascade: the model that makes the pictures it enlarges goes with it
            copy_base(find_model(c.upscale_base), folder)
        return folder

    def _export_adapter(self, folder: Path) -> Path:
        """An adapter run's result: ``folder/<run name>.safetensors`` (the adapter alone) + training.json."""
        c = self.config
        record = {
            "kind": c.adapter.kind, "base_model": c.model.init, "rank": c.adapter.rank,
            "alpha": c.adapter.alpha or float(c.adapter.rank), "targets": list(c.adapter.targets),
            "step": self.state.step, "images_seen": self.state.step * c.optim.batch_size,
            "train_seconds": round(self.state.train_seconds, 1),
        }  # fmt: skip
        path = export_adapter(self.averaged.denoiser.net, c.adapter, folder, self.out.name, record)
        (folder / "training.json").write_text(json.dumps({**record, "config": to_dict(c)}, indent=1) + "\n")
        return path

    def _image_shape(self, net: torch.nn.Module) -> tuple[int, int, int] | None:
        """(C, H, W) of the images the model makes; None for points or non-square images (no pipeline)."""
        size = getattr(net.config, "image_size", None)
        if size is None:
            return None
        if self.latent.autoencoder is None:
            return getattr(net.config, "outputs", net.config.in_channels), size, size
        shape = tuple(self.batches.example().shape)  # pixels: the autoencoder sets the sample size
        return shape if len(shape) == 3 and shape[1] == shape[2] else None


def model_settings(config: TrainConfig, name: str, image_shape: tuple[int, ...]) -> ModelSettings:
    """The exported model's settings: what it was trained with, and its previews' options as defaults,
    so ``Pipeline.load(export).generate(prompt, seed=s)`` is the preview's image of that prompt and seed."""
    m, s = config.model, config.schedule
    channels, height, _ = image_shape
    defaults = config.sampling.options()
    return ModelSettings(
        name=name, image_size=height, channels=channels, precond=m.precond, sigma_data=m.sigma_data,
        beta_schedule=s.beta_schedule, num_train_timesteps=s.num_train_timesteps,
        latent_scale=m.latent_scale if m.autoencoder else 1.0, upscale_from=m.upscale_from,
        audio=dataset_audio(config.data.name, config.data.options),  # a sound dataset names its format
        **{key: getattr(defaults, key) for key in MODEL_DEFAULTS},
    )  # fmt: skip


def _section(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def check_resumable(saved: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    """One clear line when the config being resumed with changes what the checkpoint was trained with."""
    conflicts = resume_conflicts(saved, now)
    if conflicts:
        key = conflicts[0]
        old, new = _lookup(saved, key), _lookup(now, key)
        raise ValueError(
            f"--resume: {key} is {new!r} but {path.name} was trained with {old!r}; "
            "only steps, device, threads, log.*, sampling.*, checkpoint.* and data.workers/prefetch/cache "
            "may change on resume"
        )


def _lookup(values: dict[str, Any], dotted: str) -> Any:
    for name in dotted.split("."):
        values = values.get(name) if isinstance(values, dict) else None
    return values
