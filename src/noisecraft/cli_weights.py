"""The flags that say how to read Stable Diffusion weights, shared by ``generate``, ``convert`` and
``serve``: argparse only; ``model.load_model`` checks and uses the values."""

from __future__ import annotations

import argparse
from typing import Any


def add_weights_flags(p: argparse.ArgumentParser) -> None:
    """--vae, --prediction and --config on a subcommand's parser."""
    p.add_argument(
        "--vae", default=None, metavar="FILE",
        help="Stable Diffusion models: the autoencoder from this .safetensors file instead of the model's",
    )  # fmt: skip
    p.add_argument(
        "--prediction", choices=("eps", "v"), default=None,
        help="Stable Diffusion single files: what the U-Net predicts (SD 2's 768-v models: v; default: "
        "the --config's, else eps)",
    )  # fmt: skip
    p.add_argument(
        "--config", default=None, metavar="DIR_OR_YAML",
        help="Stable Diffusion single files: what the tensors cannot say (head counts, v-prediction), "
        "from a diffusers model folder's configs or the original .yaml (default: FILE.yaml beside "
        "the checkpoint, if there is one)",
    )  # fmt: skip


def weights_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``Pipeline.load`` / ``load_model`` from the parsed flags."""
    return {"vae": args.vae, "prediction": args.prediction, "config": args.config}


def add_lora_dir_flag(p: argparse.ArgumentParser, what: str) -> None:
    """--lora-dir: the folder of the LoRA files that ``<lora:NAME:SCALE>`` in a prompt names."""
    p.add_argument(
        "--lora-dir", default=None, metavar="DIR",
        help=f"where <lora:NAME:SCALE> in a prompt finds NAME.safetensors{what}",
    )  # fmt: skip
