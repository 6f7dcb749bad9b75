"""Shared machinery for frozen Hugging Face text encoders (MiniLM, local CLIP/T5), loaded offline.

The transformers model is kept *outside* the module tree (a plain attribute, not a submodule), so
it never appears in ``state_dict()`` or ``parameters()``: a saved component is only its config
(where the weights come from), an optimizer never sees the frozen weights, and a parent module's
``load_state_dict`` does not expect them. ``_apply`` forwards ``.to()`` / ``.half()`` / ``.cuda()``
to the hidden model, and ``train()`` leaves it in eval mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..conditioning import Conditioning
from .tokenizer import check_prompts, warn_truncated


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide transformers' per-load "Loading weights" bar (a user sees one for every model load)."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


class FrozenHFTextEncoder(nn.Module):
    """Base class: a frozen transformers encoder + its tokenizer → Conditioning(tokens, mask, pooled)."""

    def _set_model(self, model: Any, tokenizer: Any, max_length: int) -> None:
        model.requires_grad_(False)
        object.__setattr__(self, "hf_model", model.eval())  # bypasses nn.Module registration
        self.hf_tokenizer, self.max_length = tokenizer, max_length

    @property
    def dim(self) -> int:
        return int(self.hf_model.config.hidden_size)  # T5 maps hidden_size to d_model

    def _apply(self, fn, recurse: bool = True):
        self.hf_model._apply(fn)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> FrozenHFTextEncoder:
        super().train(mode)
        self.hf_model.eval()  # frozen: dropout stays off even inside a training loop
        return self

    def tokenize(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """ids [B, L] and attention mask [B, L] (bool), truncated to max_length with a warning."""
        prompts = check_prompts(prompts)
        lengths = [
            len(ids) for ids in self.hf_tokenizer(prompts, truncation=False, verbose=False)["input_ids"]
        ]
        warn_truncated(lengths, self.max_length, type(self).__name__)
        batch = self.hf_tokenizer(
            prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        device = next(self.hf_model.parameters()).device
        return batch["input_ids"].to(device), batch["attention_mask"].to(device).bool()

    def pool(self, hidden: Tensor, mask: Tensor, outputs: Any) -> Tensor:
        """One vector per prompt: the mean over real tokens; subclasses may use the model's own."""
        real = mask[..., None].to(hidden.dtype)  # [B, L, 1]
        return (hidden * real).sum(1) / real.sum(1).clamp(min=1)

    @property
    def trainable(self) -> bool:
        """Whether any of this module's own parameters (an adapter's; never the hidden model's) train."""
        return any(p.requires_grad for p in self.parameters())

    def forward(self, prompts: list[str]) -> Conditioning:
        ids, mask = self.tokenize(prompts)
        # no_grad, not inference_mode, when nothing trains: the outputs must be usable in a training graph
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trainable):
            outputs = self.hf_model(input_ids=ids, attention_mask=mask.long())
        hidden = outputs.last_hidden_state  # [B, L, D]
        tokens = hidden * mask[..., None].to(hidden.dtype)  # zeroed padding, as Conditioning.cat pads
        return Conditioning(tokens, mask, self.pool(hidden, mask, outputs))


def missing_files(folder: Path, required: dict[str, list[list[str]]]) -> list[str]:
    """Names of the requirements not met; each is satisfied by any one group of files all present."""
    missing = []
    for what, alternatives in required.items():
        if not any(all((folder / name).is_file() for name in group) for group in alternatives):
            options = " or ".join(" + ".join(group) for group in alternatives)
            missing.append(f"{what} ({options})")
    return missing
