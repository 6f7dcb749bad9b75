"""Stable Diffusion's CLIP text encoders (Radford et al. 2021), built from a checkpoint's own tensors.

Each encoder is a transformers ``CLIPTextModel`` (or ``CLIPTextModelWithProjection`` when the state
dict holds a ``text_projection``) whose ``CLIPTextConfig`` is read from the tensor shapes; nothing is
fetched from the hub and ``from_pretrained`` is never called. What SD reads from each encoder:

- SD 1.x (Rombach et al. 2022), CLIP ViT-L/14, quick-GELU: the last layer's output after
  ``final_layer_norm`` (diffusers ``encode_prompt``, ``clip_skip=None``).
- SD 2.x, OpenCLIP ViT-H/14, GELU: the penultimate layer's output *with* ``final_layer_norm``
  (ldm's ``FrozenOpenCLIPEmbedder(layer="penultimate")``). diffusers' SD2 ``text_encoder`` holds only
  23 of the 24 layers, so there it is the last layer of the stored model: ``skip_layers`` 1 for the
  24-layer tower, 0 for diffusers' 23-layer one (``sd2`` picks it from the layer count).
- SDXL (Podell et al. 2023): ViT-L penultimate (no final norm) ++ OpenCLIP ViT-bigG/14 penultimate
  (no final norm) along features (768 + 1280 = 2048); pooled = bigG's ``text_projection`` of its
  final-normed last-layer state at the first EOS (diffusers SDXL ``encode_prompt``, ``clip_skip=None``).

``skip_layers`` k reads ``hidden_states[-1 - k]`` (diffusers' ``clip_skip`` k for SD1/2, k - 1 for SDXL).
The Conditioning mask is all True over the 77 positions: SD's U-Net cross-attends to every position,
padding included, and the padding states differ with the pad id (EOS for ViT-L, 0 = "!" for OpenCLIP).
Pooled for SD1/SD2 is the final-normed EOS state (``pooler_output``), which their U-Nets do not use.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..components import register_component
from ..conditioning import Conditioning
from .clip_tokenizer import CONTEXT, CLIPTokenizer
from .tokenizer import check_prompts

EOS_ID, OPEN_CLIP_PAD_ID = 49407, 0  # "<|endoftext|>"; OpenCLIP pads with id 0 ("!")
LAYER_NORM_EPS = 1e-5  # every SD CLIP; not stored in the tensors


@dataclass
class CLIPTextSpec:
    """One CLIP text transformer: its shape (from the tensors) and how SD reads it (chosen per model)."""

    hidden_size: int = 768
    layers: int = 12
    intermediate_size: int = 3072
    heads: int | None = None  # None: hidden_size // 64 (every SD CLIP has 64-wide heads)
    vocab_size: int = 49408
    positions: int = CONTEXT
    projection_dim: int | None = None  # set: CLIPTextModelWithProjection (SDXL's bigG)
    activation: str = "quick_gelu"  # OpenAI CLIP (SD1, SDXL's ViT-L); "gelu" for OpenCLIP (SD2, bigG)
    skip_layers: int = 0  # read hidden_states[-1 - skip_layers]: 0 last layer, 1 penultimate
    final_norm: bool = True  # apply final_layer_norm to that state (SD1, SD2) or not (SDXL)
    pad_id: int = EOS_ID

    def __post_init__(self) -> None:
        heads = self.heads or self.hidden_size // 64
        if heads < 1 or self.hidden_size % heads:
            raise ValueError(f"hidden_size {self.hidden_size} needs heads dividing it, got {self.heads}")
        if not 0 <= self.skip_layers < self.layers:
            raise ValueError(f"skip_layers must be in [0, {self.layers}), got {self.skip_layers}")
        if self.activation not in ("quick_gelu", "gelu"):
            raise ValueError(f"activation must be 'quick_gelu' or 'gelu', got {self.activation!r}")

    def hf_config(self) -> Any:
        """The transformers ``CLIPTextConfig`` for this shape."""
        from transformers import CLIPTextConfig

        return CLIPTextConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            projection_dim=self.projection_dim or self.hidden_size,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads or self.hidden_size // 64,
            max_position_embeddings=self.positions,
            hidden_act=self.activation,
            layer_norm_eps=LAYER_NORM_EPS,
            bos_token_id=EOS_ID - 1,
            eos_token_id=EOS_ID,  # pooled state: the first EOS in each row
            pad_token_id=self.pad_id,
        )


@dataclass
class SDTextEncoderConfig:
    encoders: tuple[CLIPTextSpec, ...] = field(default_factory=lambda: (CLIPTextSpec(),))

    def __post_init__(self) -> None:
        # a config read back from JSON holds plain dicts
        self.encoders = tuple(e if isinstance(e, CLIPTextSpec) else CLIPTextSpec(**e) for e in self.encoders)
        if not self.encoders or len({e.positions for e in self.encoders}) != 1:
            raise ValueError("need at least one encoder, all with the same number of positions")


def strip_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keys relative to the text tower ('embeddings.…', 'encoder.…'); 'text_projection.weight' kept."""
    return {re.sub(r"^text_model\.", "", k): v for k, v in state.items() if not k.endswith("position_ids")}


def layer_count(state: dict[str, Tensor]) -> int:
    """How many transformer layers a text-tower state dict holds."""
    return len({m.group(1) for k in strip_prefix(state) if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})


def spec_from_state_dict(state: dict[str, Tensor], **reading: Any) -> CLIPTextSpec:
    """A CLIPTextSpec with the shape read from a transformers-named state dict; ``reading`` sets the rest."""
    state = strip_prefix(state)
    token = state["embeddings.token_embedding.weight"]  # [vocab, hidden]
    projection = state.get("text_projection.weight")  # [projection_dim, hidden]
    return CLIPTextSpec(
        hidden_size=token.shape[1],
        layers=layer_count(state),
        intermediate_size=state["encoder.layers.0.mlp.fc1.weight"].shape[0],
        vocab_size=token.shape[0],
        positions=state["embeddings.position_embedding.weight"].shape[0],
        projection_dim=None if projection is None else projection.shape[0],
        **reading,
    )


def build_hf_model(spec: CLIPTextSpec) -> nn.Module:
    """An empty (zeroed) CLIPTextModel[WithProjection] for ``spec``: no random init, no hub."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    try:
        from transformers.initialization import no_init_weights  # transformers 5
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights
    model_class = CLIPTextModel if spec.projection_dim is None else CLIPTextModelWithProjection
    with no_init_weights():
        model = model_class(spec.hf_config())
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # weights come from load_state_dict; zeros, never stale memory, until then
    return model.requires_grad_(False).eval()


def load_hf_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """load_state_dict(strict=True) from keys with or without the 'text_model.' prefix."""
    prefixed = any(k.startswith("text_model.") for k in model.state_dict())
    state = {
        (f"text_model.{k}" if prefixed and not k.startswith("text_projection") else k): v
        for k, v in strip_prefix(state).items()
    }
    model.load_state_dict(state, strict=True)


@functools.cache
def default_tokenizer() -> CLIPTokenizer:
    """CLIP's tokenizer from the open-clip-torch wheel, built once per process (≈0.3 s)."""
    return CLIPTokenizer.from_open_clip()


PRESETS: dict[str, list[dict[str, Any]]] = {
    "sd1": [dict(activation="quick_gelu", skip_layers=0, final_norm=True, pad_id=EOS_ID)],
    "sd2": [dict(activation="gelu", final_norm=True, pad_id=OPEN_CLIP_PAD_ID)],  # skip_layers: see below
    "sdxl": [
        dict(activation="quick_gelu", skip_layers=1, final_norm=False, pad_id=EOS_ID),
        dict(activation="gelu", skip_layers=1, final_norm=False, pad_id=OPEN_CLIP_PAD_ID),
    ],
}
SD2_SKIP = {24: 1, 23: 0}  # OpenCLIP ViT-H's full tower; diffusers' conversion without the last layer


@register_component("sd_clip")
class SDTextEncoder(nn.Module):
    """Frozen CLIP text encoder(s) of Stable Diffusion (Radford et al. 2021; Rombach et al. 2022):
    prompts → Conditioning(tokens [B, 77, D], all-True mask, pooled)."""

    config_class = SDTextEncoderConfig

    def __init__(self, config: SDTextEncoderConfig | None = None):
        super().__init__()
        self.config = config = config or SDTextEncoderConfig()
        self.encoders = nn.ModuleList(build_hf_model(spec) for spec in config.encoders)
        self.tokenizer = default_tokenizer()

    @classmethod
    def from_state_dicts(
        cls, preset: str, *states: dict[str, Tensor], each: tuple[dict[str, Any], ...] = (), **reading: Any
    ) -> SDTextEncoder:
        """Encoder(s) for ``preset`` ('sd1', 'sd2', 'sdxl') from transformers-named state dicts, one per
        encoder; ``reading`` overrides the preset's reading for every encoder (e.g. heads, skip_layers),
        ``each`` (one dict per encoder) for one encoder."""
        if preset not in PRESETS or len(states) != len(PRESETS[preset]) or len(each) not in (0, len(states)):
            expected = {k: len(v) for k, v in PRESETS.items()}
            raise ValueError(f"preset {preset!r} with {len(states)} state dict(s); known: {expected}")
        specs = []
        for state, defaults, own in zip(states, PRESETS[preset], each or ({},) * len(states)):
            options = {**defaults, **reading, **{k: v for k, v in own.items() if v is not None}}
            if preset == "sd2" and "skip_layers" not in options:
                layers = layer_count(state)
                if layers not in SD2_SKIP:
                    raise ValueError(f"SD2 text encoder with {layers} layers: pass skip_layers")
                options["skip_layers"] = SD2_SKIP[layers]
            specs.append(spec_from_state_dict(state, **options))
        encoder = cls(SDTextEncoderConfig(tuple(specs)))
        for model, state in zip(encoder.encoders, states):
            load_hf_state(model, state)
        return encoder

    @property
    def dim(self) -> int:
        return sum(spec.hidden_size for spec in self.config.encoders)

    @property
    def max_length(self) -> int:
        return self.config.encoders[0].positions

    def train(self, mode: bool = True) -> SDTextEncoder:
        super().train(mode)
        self.encoders.eval()  # frozen: dropout stays off even inside a training loop
        return self

    def encode_one(self, model: nn.Module, spec: CLIPTextSpec, ids: Tensor) -> tuple[Tensor, Tensor]:
        """One encoder's chosen hidden state [B, L, D] and pooled vector [B, D or projection_dim]."""
        out = model(input_ids=ids, output_hidden_states=True)
        hidden = out.hidden_states[-1 - spec.skip_layers]  # [0] is the embedding, [i] layer i's output
        if spec.final_norm:
            hidden = getattr(model, "text_model", model).final_layer_norm(hidden)
        pooled = out.pooler_output if spec.projection_dim is None else out.text_embeds
        return hidden, pooled

    @torch.no_grad()  # no_grad, not inference_mode: the outputs must be usable in a training graph
    def encode_ids(self, ids: Tensor, mask: Tensor) -> Conditioning:
        """Conditioning from ids [B, L] and the tokenizer's mask [B, L] (True from BOS to EOS)."""
        states, pooled = [], None
        for model, spec in zip(self.encoders, self.config.encoders):
            padded = torch.where(mask, ids, torch.full_like(ids, spec.pad_id))  # each encoder's pad id
            hidden, pooled = self.encode_one(model, spec, padded)
            states.append(hidden)
        tokens = torch.cat(states, dim=-1)  # SDXL: 768 + 1280 features
        every = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)  # U-Net sees padding
        return Conditioning(tokens, every, pooled)  # pooled: the last encoder's

    def forward(self, prompts: list[str]) -> Conditioning:
        ids, mask = self.tokenizer(check_prompts(prompts), self.max_length)
        device = self.encoders[0].get_input_embeddings().weight.device
        return self.encode_ids(ids.to(device), mask.to(device))
