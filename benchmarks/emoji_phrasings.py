"""How emoji models hear prompts: retrieval of the meant emoji for its exact name, for a caption as people
type it (the training phrasings of ``phrasing="typed"``), and for the held-out hand-written paraphrases.

    .venv/bin/python benchmarks/emoji_phrasings.py --model emoji --model runs/emoji-text/model \
        [--num 500] [--threads 2]

Every model gets the same prompts and seeds, so the rows differ only in the model:
- names: the main names of ``--num`` seeded-random emoji (what ``noisecraft eval`` scores);
- typed: for the same emoji, the first caption ``EmojiCaptioner`` draws for it (epochs 0, 1, …) that
  is not its bare name ("a drawing of a watermelon", "alarm clock clipart"): phrasings the typed
  recipes train on, as people type them;
- paraphrases: the 157 held-out prompts of ``data/emoji_paraphrases.tsv`` (never a training caption),
  one image each at seed 0 and again at seed 1000;
- second paraphrases: the 100 of ``data/emoji_paraphrases_2.tsv``, written after the typed captions
  gained colours and adjectives, for other emoji, at the same two seeds;
- third paraphrases: the 100 of ``data/emoji_paraphrases_3.tsv``, for 100 more emoji, written before the
  sentence-vector path was built, at the same two seeds.
Retrieval: the meant emoji among the nearest of all 1,899 at 32×32 (pixel distance), top-1 and top-5.
"""

from __future__ import annotations

import argparse

import torch
from common import add_common_arguments, append_results, markdown_table, setup

from noisecraft.data.emoji_captions import (
    PARAPHRASE_FILE,
    SECOND_PARAPHRASE_FILE,
    THIRD_PARAPHRASE_FILE,
    EmojiCaptioner,
    paraphrases,
)
from noisecraft.evaluation.adherence import retrieval_accuracy
from noisecraft.evaluation.evaluate import generate_images
from noisecraft.evaluation.reference import build_dataset, pick_indices
from noisecraft.pipeline import Pipeline

PARAPHRASE_SEEDS = (0, 1000)
PARAPHRASE_SETS = {
    "paraphrases": PARAPHRASE_FILE,
    "second paraphrases": SECOND_PARAPHRASE_FILE,
    "third paraphrases": THIRD_PARAPHRASE_FILE,
}


def typed_caption(captioner: EmojiCaptioner, index: int, seed: int) -> str:
    """The first caption drawn for emoji ``index`` over epochs 0, 1, … that is not its bare name."""
    epoch = 0
    while (caption := captioner.caption(index, seed, epoch)) == captioner.main[index]:
        epoch += 1
    return caption


def prompt_sets(args: argparse.Namespace, data) -> dict[str, tuple[list[str], list[int], int]]:
    """Row name → (prompts, meant emoji indices, seed of the first image)."""
    indices = pick_indices(len(data), args.num, args.seed)
    captioner = data.captioner  # the typed captioner, with the pictures' colours
    sets = {
        "names": ([data.entries[i].name for i in indices], indices, args.seed),
        "typed": ([typed_caption(captioner, i, args.seed) for i in indices], indices, args.seed),
    }
    for name, path in PARAPHRASE_SETS.items():
        held, meant = paraphrases(data.entries, path)
        for seed in PARAPHRASE_SEEDS:
            sets[f"{name}, seed {seed}"] = (held, meant, seed)
    return sets


def scores(pipe: Pipeline, sets: dict, gallery: torch.Tensor) -> dict[str, dict[int, float]]:
    """Row name → {1: top-1, 5: top-5}, plus each paraphrase set's two seeds pooled."""
    out = {}
    for name, (prompts, meant, seed) in sets.items():
        images = generate_images(pipe, prompts, seed=seed, desc=name)
        out[name] = retrieval_accuracy(images, torch.tensor(meant), gallery, ks=(1, 5))
    for name in PARAPHRASE_SETS:
        pooled = [out[f"{name}, seed {s}"] for s in PARAPHRASE_SEEDS]
        out[f"{name}, both seeds"] = {k: sum(p[k] for p in pooled) / len(pooled) for k in (1, 5)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True, help="an emoji model (repeat to compare)")
    parser.add_argument("--num", type=int, default=500, help="emoji for the names and typed rows (500)")
    parser.add_argument("--seed", type=int, default=0, help="which emoji, and the images' seeds (default 0)")
    add_common_arguments(parser)
    args = parser.parse_args()
    setup(args)
    data = build_dataset("emoji", 32, None, {"phrasing": "typed"})
    gallery = torch.stack([data[i][0] for i in range(len(data))])  # [1899, 3, 32, 32]
    sets = prompt_sets(args, data)
    table = []
    for model in args.model:
        pipe = Pipeline.load(model)
        for row, top in scores(pipe, sets, gallery).items():
            table.append([model, pipe.weights_hash, row, f"{100 * top[1]:.1f}", f"{100 * top[5]:.1f}"])
            print(table[-1], flush=True)
    body = (
        markdown_table(["model", "weights", "prompts", "top-1 %", "top-5 %"], table)
        + f"\n\n{args.num} seeded-random emoji (seed {args.seed}) for the names and typed rows, the 157 "
        + "held-out paraphrases, the 100 of the second set and the 100 of the third at seeds 0 and 1000; "
        + "each model's defaults "
        + "(steps, sampler, guidance); retrieval among the 1,899 emoji at 32×32."
    )
    print(body)
    if not args.no_append:
        append_results("Emoji: names, typed captions and held-out paraphrases", body, args.note)


if __name__ == "__main__":
    main()
