"""The ``noisecraft`` command: turns arguments into library calls — nothing else lives here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .cli_control import add_control_flags, control_requests
from .cli_weights import add_lora_dir_flag, add_weights_flags, weights_options
from .devices import add_device_arguments
from .evaluation.cli import add_eval_parser
from .server.cli import add_serve_parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _add_explain(sub: argparse._SubParsersAction) -> None:
    from .data.toy2d import TOY_MIXTURES
    from .samplers import SAMPLERS

    p = sub.add_parser("explain", help="draw the forward process, reverse sampling and score field")
    p.add_argument("--out", default="outputs/explain", help="folder for the PNGs (default: %(default)s)")
    p.add_argument("--mixture", default="ring", choices=TOY_MIXTURES, help="2-D data (default: %(default)s)")
    p.add_argument("--sampler", default="heun", choices=sorted(SAMPLERS), help="default: %(default)s")
    p.add_argument("--steps", type=_positive_int, default=18, help="sampler steps (default: %(default)s)")
    p.add_argument("--points", type=_positive_int, default=2000, help="samples drawn (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed, -1 draws one (default: %(default)s)")
    p.add_argument("--forward", metavar="IMAGE", help="instead: the forward process applied to a real image")
    p.add_argument(
        "--size", type=_positive_int, default=64, help="--forward: image size (default: %(default)s)"
    )
    p.add_argument(
        "--sound", action="store_true",
        help="instead: the forward process on a sound (a tones clip drawn by --seed): spectrograms, a WAV",
    )  # fmt: skip
    p.set_defaults(run=_run_explain)


def _run_explain(args: argparse.Namespace) -> None:
    from .explain import ExplainConfig, explain_toy2d, forward_strip
    from .images import load_image, save_png
    from .noise import pick_seed

    if args.seed == -1:
        args.seed = pick_seed(args.seed)
        print(f"noisecraft explain: seed -1 drew seed {args.seed}", file=sys.stderr)
    if args.sound:
        for path in _explain_sound(args.seed, args.out):
            print(path)
        return
    if args.forward:
        image = load_image(args.forward, 3, args.size)
        strip = forward_strip(image, FORWARD_SIGMAS, args.seed, scale=max(1, 128 // args.size))
        print(save_png(strip, f"{args.out}/forward-image.png"))
        return
    config = ExplainConfig(args.mixture, args.sampler, args.steps, num_points=args.points, seed=args.seed)
    for path in explain_toy2d(args.out, config):
        print(path)


FORWARD_SIGMAS = [0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.5, 3.0, 10.0, 80.0]


def _explain_sound(seed: int, out: str) -> list:
    from .explain import forward_sound, shipped_tones
    from .images import save_png
    from .sound_files import save_wav

    clips = shipped_tones(seed)
    print(f"the clip: {clips.clip_and_caption(0)[1]}", file=sys.stderr)
    strip, heard = forward_sound(clips.waveform(0), FORWARD_SIGMAS, seed, clips.audio)
    png = save_png(strip, f"{out}/forward-sound.png")
    return [png, save_wav(heard, f"{out}/forward-sound.wav", clips.audio.sample_rate)]


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="make images from text with a shipped or saved model")
    p.add_argument("prompts", nargs="*", help="one or more prompts (each makes --num images)")
    p.add_argument(
        "--model", default=None, help="shipped model name or saved pipeline folder (default: emoji)"
    )
    add_weights_flags(p)
    p.add_argument("--negative", default=None, help="negative prompt: what the image should not be")
    _add_sampling_flags(p)
    p.add_argument("--num", type=_positive_int, default=1, help="images per prompt (default: 1)")
    p.add_argument("--out", default="outputs/generate", help="output folder (default: %(default)s)")
    p.add_argument("--init", metavar="IMAGE", help="image-to-image: start from this picture (SDEdit)")
    p.add_argument(
        "--strength", type=float, default=None, help="--init: 0 keeps it, 1 ignores it (default: 0.6)"
    )
    p.add_argument("--mask", metavar="MASK", help="inpainting (with --init): repaint where the mask is white")
    p.add_argument(
        "--tile", action=argparse.BooleanOptionalAction, default=None,
        help="latent models: decode (and encode) in overlapping 512-pixel tiles, using less memory "
        "(default: only images above 1024×1024 pixels)",
    )  # fmt: skip
    p.add_argument("--show-steps", action="store_true", help="also save a step strip and a GIF per image")
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--from-png", metavar="PNG",
        help="regenerate an image from the parameters it carries (flags given here win over the PNG's)",
    )  # fmt: skip
    source.add_argument(
        "--from-wav", metavar="WAV",
        help="regenerate a sound model's clip from the parameters its WAV carries (as --from-png)",
    )  # fmt: skip
    p.add_argument(
        "--allow-paths", action="store_true",
        help="--from-png/--from-wav: read the model folder, init image and mask files the file names",
    )  # fmt: skip
    p.add_argument(
        "--keep-paths", action="store_true",
        help="record absolute paths of the model, init image and mask in the PNGs (default: names only)",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_arguments(p)
    # -- LoRA adapters (Hu et al. 2021) --
    p.add_argument(
        "--lora", action="append", default=[], metavar="FILE[:SCALE]",
        help="merge a LoRA file (kohya or diffusers names) into the model at SCALE (default 1); repeatable",
    )  # fmt: skip
    add_lora_dir_flag(p, " (and --from-png the adapters it records)")
    add_control_flags(p)
    p.set_defaults(run=_run_generate)


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """Sampling options: each flag's dest is a SamplingOptions field, which checks its value."""
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    p.add_argument(
        "--sampler", default=None,
        help="a name from `noisecraft samplers`, or its A1111 name ('Euler a'); default: the model's",
    )  # fmt: skip
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument(
        "--guidance-rescale", type=float, default=None, metavar="PHI",
        help="guidance rescale φ in [0, 1] (Lin et al. 2023; default: 0, off)",
    )  # fmt: skip
    p.add_argument(
        "--deep-cache", type=int, default=None, metavar="N",
        help="U-Nets: run the whole network every N-th step and only its outer blocks between, on the "
        "deep features kept (DeepCache, Ma et al. 2023); faster, slightly different (default: 1, off)",
    )  # fmt: skip
    p.add_argument(
        "--guidance-interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
        help="guide only where LO < σ ≤ HI (Kynkäänniemi et al. 2024; default: every σ)",
    )  # fmt: skip
    p.add_argument(
        "--schedule",
        default=None,
        help="σ spacing: karras, exponential, polyexponential, sgm_uniform, beta; for DDPM/SD models also "
        "uniform, leading, trailing; or A1111's names ('SGM Uniform') (default: the model's)",
    )
    p.add_argument("--width", type=int, default=None, help="image width in pixels (default: the model's)")
    p.add_argument("--height", type=int, default=None, help="image height in pixels (default: the model's)")
    p.add_argument(
        "--seed", type=int, default=None, help="seed of the first image; image i uses seed + i; -1: random"
    )


def _run_generate(args: argparse.Namespace) -> None:
    from .devices import placement_from_args
    from .generation import (
        FilesRequest,
        PngTrust,
        check_model_matches,
        generate_to_files,
        request_from_png,
    )
    from .infotext import png_parameters
    from .model import SamplingOptions
    from .noise import RANDOM_SEED
    from .pipeline import Pipeline
    from .server.limits import Limits
    from .sound_files import wav_parameters

    placement = placement_from_args(args)  # a device or precision that cannot be used fails first
    request = FilesRequest(
        prompts=args.prompts,
        negative_prompt=args.negative,
        num=args.num,
        options=SamplingOptions.pick(vars(args)),  # every flag named after an option field
        init=args.init,
        mask=args.mask,
        show_steps=args.show_steps,
        progress=not args.quiet,
        keep_paths=args.keep_paths,
        controls=control_requests(args),
    )
    model = args.model or "emoji"
    source = args.from_png or args.from_wav  # a file whose parameters make the request
    if args.seed == RANDOM_SEED and not source:
        print(f"noisecraft generate: seed -1 drew seed {request.options.seed}", file=sys.stderr)
    if source:
        given = {k: v for k, v in vars(args).items() if v is not None}
        given.update(progress=not args.quiet, **({"controls": request.controls} if request.controls else {}))
        trust = PngTrust(args.allow_paths, Limits().max_steps, Limits().max_pixels)
        meta = wav_parameters(source) if args.from_wav else png_parameters(source)
        request, model = request_from_png(source, given, trust, meta)
        for key in ("model", "init", "mask") if args.allow_paths else ():
            value = model if key == "model" else getattr(request, key)
            if value and getattr(args, key) is None:
                print(f"reading the {key} {value!r} that {source} names", file=sys.stderr)
    elif not args.prompts:
        raise ValueError("give at least one prompt (or --from-png IMAGE / --from-wav CLIP)")
    pipe = Pipeline.load(model, **weights_options(args), loras=args.lora, lora_dir=args.lora_dir)
    pipe.to(placement)
    if source:
        check_model_matches(pipe, meta.get("weights"))
    for prompt, (caption, similarity) in zip(request.prompts, pipe.heard(request.prompts)):
        if caption != prompt:
            print(f"{prompt!r} is heard as {caption!r} (similarity {similarity:.2f})", file=sys.stderr)
    for path in generate_to_files(pipe, request, args.out):
        print(path)


def _add_samplers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("samplers", help="list the sampler names")
    p.set_defaults(run=_run_samplers)


def _run_samplers(args: argparse.Namespace) -> None:
    from .samplers import SAMPLERS

    print("\n".join(sorted(SAMPLERS)))


def _add_run_options(p: argparse.ArgumentParser, out_help: str, out_required: bool = False) -> None:
    """--set, --resume, --out and --steps: shared by train and distill (both are training runs)."""
    p.add_argument(
        "--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
        help="override config fields, e.g. --set optim.lr=2e-4 sampling.every=0",
    )  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue exactly from the last checkpoint in --out")
    p.add_argument("--out", default=None, required=out_required, help=out_help)
    p.add_argument("--steps", type=_positive_int, default=None, help="total steps (= --set steps=N)")


def _run_training(config, out: str, resume: bool, command: str) -> None:
    from .training import TrainingDiverged, train

    try:
        train(config, out, resume=resume)
    except TrainingDiverged as err:  # exit code 1: the run failed (2 is for bad input)
        raise SystemExit(f"noisecraft {command}: error: {err}") from None


def _overrides(args: argparse.Namespace) -> list[str]:
    return [*args.overrides, *([f"steps={args.steps}"] if args.steps else [])]


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a recipe (configs/*.toml); torchrun for DDP")
    p.add_argument("config", help="a recipe file, or a recipe name in configs/ (toy2d, shapes32, ...)")
    _add_run_options(p, "run folder (default: outputs/train/<recipe name>)")
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> None:
    from .training import load_config, resolve_recipe

    path = resolve_recipe(args.config)
    config = load_config(path, _overrides(args))
    _run_training(config, args.out or f"outputs/train/{path.stem}", args.resume, "train")


def _add_distill(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="distil a trained model into a 1–4-step consistency model")
    p.add_argument("model", help="the teacher: a shipped model name or a saved model folder")
    p.add_argument(
        "--recipe", default=None,
        help="distillation fields over the teacher's recipe (default: configs/distill.toml)",
    )  # fmt: skip
    _add_run_options(p, "run folder (checkpoints/, samples/, metrics.jsonl, model/)", out_required=True)
    p.set_defaults(run=_run_distill)


def _run_distill(args: argparse.Namespace) -> None:
    from .training.distill import distill_config

    config = distill_config(args.model, args.recipe, _overrides(args))
    _run_training(config, args.out, args.resume, "distill")


def _add_train_control(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-control", help="train a control branch (ControlNet) for a frozen model")
    p.add_argument("recipe", help="a control recipe, e.g. configs/control_shapes.toml")
    p.add_argument("--out", required=True, help="run folder: checkpoints/, model/ (the branch), log.jsonl")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--steps", type=_positive_int, default=None, help="total steps (overrides the recipe's)")
    p.set_defaults(run=_run_train_control)


def _run_train_control(args: argparse.Namespace) -> None:
    from .training.control import read_config, train_control

    config = read_config(args.recipe, {"steps": args.steps} if args.steps else None)
    print(train_control(config, args.out, args.resume))


def _add_ship(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ship", help="package a trained model (fp16) with a MODEL_CARD.md")
    p.add_argument("model", help="the model/ folder of a `noisecraft train` run")
    p.add_argument("--name", required=True, help="the name `--model NAME` will load it by")
    p.add_argument(
        "--recipe", required=True, help="the recipe it was trained with, e.g. configs/shapes32.toml"
    )
    p.add_argument("--eval", default=None, help="JSON written by `noisecraft eval` to put on the card")
    p.add_argument("--dest", default=None, help="folder to write (default: the package's models/NAME)")
    p.add_argument("--notes", default=None, help="a Markdown file appended to the card (status, caveats)")
    p.set_defaults(run=_run_ship)


def _run_ship(args: argparse.Namespace) -> None:
    from .model_card import ship

    print(ship(args.model, args.name, args.recipe, args.eval, args.dest, args.notes))


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="write Stable Diffusion weights as a noisecraft model folder")
    p.add_argument("source", help="a diffusers folder or a single .safetensors file")
    p.add_argument("dest", help="the folder to write (must not exist yet)")
    add_weights_flags(p)
    p.add_argument("--fp16", action="store_true", help="store the weights in float16 (half the size)")
    p.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> None:
    import torch

    from .model import load_model

    parts, _ = load_model(args.source, **weights_options(args))
    print(parts.save_new(args.dest, torch.float16 if args.fp16 else None))


def _add_vocabulary(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "vocabulary", help="copy a model so that it hears each prompt as the nearest caption it trained on"
    )
    p.add_argument("model", help="shipped model name or saved pipeline folder")
    p.add_argument("out", help="the folder to write (must not exist yet)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="a built-in dataset's captions and their other phrasings (emoji)")
    source.add_argument(
        "--captions", metavar="FILE", help="a text file: a caption per line, or 'phrase<TAB>caption'"
    )
    p.set_defaults(run=_run_vocabulary)


def _run_vocabulary(args: argparse.Namespace) -> None:
    from .model.vocabulary import add_vocabulary, dataset_vocabulary, read_captions

    captions, phrases = dataset_vocabulary(args.dataset) if args.dataset else read_captions(args.captions)
    source = f"--dataset {args.dataset}" if args.dataset else f"--captions {Path(args.captions).name}"
    print(add_vocabulary(args.model, args.out, captions, phrases, source))


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="versions, CPU instruction set, threads, chosen CPU kernels, devices")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    p.set_defaults(run=_run_info)


def _run_info(args: argparse.Namespace) -> None:
    import json

    from .info import format_info, system_info

    info = system_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))


class _VersionAction(argparse.Action):
    """--version: our version, torch's, the ISA and the kernels (torch is imported only then)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from .info import version_line

        print(version_line())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="noisecraft", description="Text-to-image diffusion.")
    parser.add_argument("--version", action=_VersionAction, help=f"show noisecraft {__version__}'s versions")
    parser.add_argument(
        "--kernels",
        default=None,
        metavar="SPEC",
        help="CPU kernels: auto (the table for this ISA) or e.g. layout=nchw,linear=mkl (see README)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_explain(sub)
    _add_samplers(sub)
    _add_train(sub)
    _add_distill(sub)
    _add_train_control(sub)
    _add_ship(sub)
    _add_convert(sub)
    _add_vocabulary(sub)
    _add_info(sub)
    add_serve_parser(sub)
    add_eval_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run, and turn expected failures into one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        if args.kernels is not None:
            from .nets.kernels import set_cpu_kernels

            set_cpu_kernels(args.kernels)
        args.run(args)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"noisecraft {args.command}: error: {err}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"noisecraft {args.command}: error: out of memory (ask for less)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
