"""A closed-vocabulary model hears a prompt as the nearest caption it was trained on.

A network trained on a fixed set of captions (the 1,899 emoji names) follows those strings and little
else; a sentence encoder, trained to place sentences that mean the same near each other (MiniLM:
Reimers & Gurevych 2019, Wang et al. 2020), knows that "a camel with two humps" means "two-hump camel".
``VocabularyTextEncoder`` wraps a model's own text encoder with that caption list (and, optionally,
more phrasings of each: aliases, keywords) and their pooled vectors. A prompt is matched by cosine
similarity of its pooled vector against every phrasing, then encoded as the caption that phrasing
means; a prompt equal to a phrasing is that phrasing's caption without matching, and the empty prompt
(guidance's unconditional side) stays empty. ``heard`` says what each prompt became.

This is retrieval, not understanding in the network: what no caption says (a colour that is not part
of a name, two things at once) is lost, and every prompt becomes one of the captions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..components import COMPONENTS, ComponentError, component_class, component_record, register_component
from ..conditioning import Conditioning

MAX_PHRASES = 100_000  # captions + phrasings a vocabulary may hold
MAX_PHRASE_CHARS = 300
ENCODE_BATCH = 256  # phrasings encoded per call when a vocabulary is built


@dataclass
class VocabularyTextEncoderConfig:
    encoder: dict = field(default_factory=dict)  # the wrapped encoder as saved: {"type": …, "config": {…}}
    captions: tuple[str, ...] = ()  # what the network was trained on; every prompt becomes one of them
    phrases: tuple[str, ...] = ()  # other ways to say a caption, matched as well …
    meanings: tuple[int, ...] = ()  # … phrases[i] means captions[meanings[i]]
    source: str = ""  # where the list came from, as `noisecraft vocabulary` was told ("--dataset emoji")

    def __post_init__(self) -> None:
        if not self.captions:
            raise ValueError("a vocabulary needs at least one caption")
        if len(self.phrases) != len(self.meanings):
            raise ValueError(f"{len(self.phrases)} phrases but {len(self.meanings)} meanings")
        if len(self.captions) + len(self.phrases) > MAX_PHRASES:
            raise ValueError(f"a vocabulary holds at most {MAX_PHRASES:,} captions and phrases")
        for text in (*self.captions, *self.phrases):
            if not isinstance(text, str) or not text.strip() or len(text) > MAX_PHRASE_CHARS:
                raise ValueError(
                    f"vocabulary entries are non-empty strings of ≤ {MAX_PHRASE_CHARS} characters"
                )
        if any(not isinstance(m, int) or not 0 <= m < len(self.captions) for m in self.meanings):
            raise ValueError(f"meanings must be caption indices in [0, {len(self.captions)})")
        if set(self.encoder) != {"type", "config"} or not isinstance(self.encoder["config"], dict):
            raise ValueError('encoder must be {"type": NAME, "config": {…}}, as a saved component records it')
        if self.encoder["type"] == "vocabulary" or self.encoder["type"] not in COMPONENTS:
            raise ValueError(f"encoder type {self.encoder['type']!r} is not a text encoder to wrap")


@register_component("vocabulary")
class VocabularyTextEncoder(nn.Module):
    """A text encoder that encodes each prompt as the nearest caption of a fixed vocabulary."""

    config_class = VocabularyTextEncoderConfig

    def __init__(self, config: VocabularyTextEncoderConfig, encoder: nn.Module | None = None):
        super().__init__()
        self.config = config
        if encoder is None:
            try:
                cls, inner = component_class(config.encoder["type"], config.encoder["config"])
                encoder = cls(inner)
            except ValueError as err:
                raise ComponentError(f"vocabulary: the wrapped encoder: {err}") from None
        self.encoder = encoder
        self.texts = (*config.captions, *config.phrases)  # row i of `vectors`
        self.means = (*range(len(config.captions)), *config.meanings)  # row i → caption index
        self.exact = {t: self.means[i] for i, t in reversed(list(enumerate(self.texts)))}  # first wins
        self.register_buffer("vectors", torch.zeros(len(self.texts), encoder.dim))  # [P, D], unit rows

    @classmethod
    def build(
        cls, encoder: nn.Module, captions: list[str], phrases: dict[str, int] | None = None, source: str = ""
    ) -> VocabularyTextEncoder:
        """Wrap ``encoder`` with ``captions`` and ``phrases`` (phrase → caption index), encoding them all."""
        phrases = {p: m for p, m in (phrases or {}).items() if p not in captions}
        config = VocabularyTextEncoderConfig(
            component_record(encoder), tuple(captions), tuple(phrases), tuple(phrases.values()), source
        )
        module = cls(config, encoder.eval())
        texts = list(module.texts)
        with torch.no_grad():
            rows = [module._unit(texts[i : i + ENCODE_BATCH]) for i in range(0, len(texts), ENCODE_BATCH)]
        module.vectors.copy_(torch.cat(rows))
        return module

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def max_length(self) -> int:
        return self.encoder.max_length

    def _unit(self, prompts: list[str]) -> torch.Tensor:
        """Unit pooled vectors [B, D] of ``prompts`` by the wrapped encoder."""
        return F.normalize(self.encoder(prompts).pooled.float(), dim=-1)

    def nearest(self, prompts: list[str]) -> list[tuple[str, float]]:
        """Each prompt's caption and the cosine similarity it was matched at (1 for an exact phrasing;
        the empty prompt stays empty)."""
        found: dict[str, tuple[str, float]] = {"": ("", 1.0)}
        for p in prompts:
            if p in self.exact:
                found[p] = (self.config.captions[self.exact[p]], 1.0)
        rest = [p for p in dict.fromkeys(prompts) if p not in found]
        if rest:  # each prompt alone, as encode_prompts encodes it: the match never depends on the batch
            with torch.no_grad():
                sims = torch.cat([self._unit([p]) for p in rest]) @ self.vectors.float().T  # [R, P]
            best, rows = sims.max(dim=1)
            for p, s, r in zip(rest, best.tolist(), rows.tolist()):
                found[p] = (self.config.captions[self.means[r]], s)
        return [found[p] for p in prompts]

    def heard(self, prompts: list[str]) -> list[str]:
        """What each prompt is encoded as."""
        return [caption for caption, _ in self.nearest(prompts)]

    def forward(self, prompts: list[str]) -> Conditioning:
        return self.encoder(self.heard(prompts))


def heard_as(encoder: nn.Module | None, prompts: list[str]) -> list[tuple[str, float]]:
    """(caption, similarity) per prompt: a vocabulary's nearest caption; any other encoder (or none)
    hears the prompt as typed, at similarity 1."""
    if isinstance(encoder, VocabularyTextEncoder):
        return encoder.nearest(list(prompts))
    return [(p, 1.0) for p in prompts]


def unwrap(encoder: nn.Module | None) -> nn.Module | None:
    """The encoder a vocabulary wraps (training trains it); any other encoder as it is."""
    return encoder.encoder if isinstance(encoder, VocabularyTextEncoder) else encoder


def wrapped_config(cls: type[nn.Module], config: Any) -> tuple[type[nn.Module], Any]:
    """``read_component_config``'s (class, config) of the encoder a saved vocabulary wraps."""
    if cls is not VocabularyTextEncoder:
        return cls, config
    return component_class(config.encoder["type"], config.encoder["config"])
