"""The models a server holds: loaded once at start, looked up by name per request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..model import shipped_models
from ..pipeline import Pipeline


class UnknownModel(ValueError):
    """A request named a model this server does not hold."""


class ModelRegistry:
    """Name → Pipeline, in the order given; the first is the default until a client changes it."""

    def __init__(self, pipelines: dict[str, Pipeline], sources: dict[str, str] | None = None):
        if not pipelines:
            raise ValueError("a server needs at least one model")
        self.pipelines = dict(pipelines)
        self.sources = sources or {name: name for name in pipelines}
        self.default = next(iter(self.pipelines))
        self.lora_dir = next((p.lora_dir for p in self.pipelines.values() if p.lora_dir is not None), None)

    @classmethod
    def load(cls, specs: list[str], lora_dir: str | None = None, **weights: Any) -> ModelRegistry:
        """Load shipped names or saved folders; a folder is known by its folder name. ``weights``:
        how to read Stable Diffusion weights (``Pipeline.load``'s vae, prediction, config);
        ``lora_dir``: the folder of the LoRA files prompts name (``<lora:NAME:SCALE>``)."""
        pipelines: dict[str, Pipeline] = {}
        sources: dict[str, str] = {}
        for spec in specs:
            name = base = (
                Path(spec).stem if Path(spec).suffix == ".safetensors" else Path(spec).name or str(spec)
            )
            suffix = 2
            while name in pipelines:  # two folders with one name: keep both, numbered
                name, suffix = f"{base}-{suffix}", suffix + 1
            pipelines[name] = Pipeline.load(spec, lora_dir=lora_dir, **weights)
            sources[name] = str(spec)
        return cls(pipelines, sources)

    @classmethod
    def shipped(cls, lora_dir: str | None = None) -> ModelRegistry:
        names = shipped_models()
        if not names:
            raise ValueError("no shipped model is installed: pass --model FOLDER")
        return cls.load(names, lora_dir)

    def title(self, name: str) -> str:
        """A1111's title: ``name [hash]``."""
        return f"{name} [{self.pipelines[name].weights_hash[:10]}]"

    def resolve(self, name: str | None) -> str:
        """The model's name for a name, an A1111 title, or None (the default)."""
        if name is None or name == "":
            return self.default
        if not isinstance(name, str):
            raise UnknownModel(f"a model name must be a string, got {type(name).__name__}")
        if name in self.pipelines:
            return name
        bare = name.rsplit(" [", 1)[0]
        if bare in self.pipelines:
            return bare
        raise UnknownModel(f"unknown model {name!r}; this server has: {', '.join(self.pipelines)}")

    def get(self, name: str | None) -> tuple[str, Pipeline]:
        name = self.resolve(name)
        return name, self.pipelines[name]
