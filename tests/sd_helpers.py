"""Tiny random Stable Diffusion models built with diffusers, saved as a diffusers folder and as an
original-layout single file, for the loader and pipeline tests (no weights are downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from test_clip_tokenizer import reference_tokenizer, write_reference_files

from noisecraft.formats.unet import unet_config_from_diffusers, unet_map
from noisecraft.formats.vae import original_name, vae_config_from_diffusers, vae_from_diffusers
from noisecraft.nets.unet import UNet


def tiny_sd_pipeline(
    tmp: Path,
    prediction: str = "epsilon",
    sd2: bool = False,
    inpainting: bool = False,
    unet_heads: int = 8,
    text_heads: int = 1,
):
    """A diffusers StableDiffusionPipeline of tiny random parts: 16×16 images, 8×8 latents; ``sd2``:
    linear projections in the U-Net and a GELU (OpenCLIP-style) text model. The default head counts
    are what a single file of these widths implies (SD 1's 8 per level; 64-wide text heads)."""
    from diffusers import AutoencoderKL as DiffusersVAE
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=9 if inpainting else 4, out_channels=4, block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), cross_attention_dim=64,
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=unet_heads, norm_num_groups=32,
        use_linear_projection=sd2,
    )  # fmt: skip
    vae = DiffusersVAE(
        block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=32, latent_channels=4,
        sample_size=16, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )  # fmt: skip
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=text_heads, intermediate_size=37,
            vocab_size=49408, max_position_embeddings=77, hidden_act="gelu" if sd2 else "quick_gelu",
        )
    )  # fmt: skip
    with torch.no_grad():  # zero-initialised outputs made non-zero, so every tensor matters
        for module in (unet, vae):
            for p in module.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction,
        timestep_spacing="trailing",
    )  # fmt: skip
    # SD 2's tokenizer pads with "!" (id 0), as OpenCLIP does
    tokenizer = reference_tokenizer(
        write_reference_files(tmp / "vocab"), pad_token="!" if sd2 else "<|endoftext|>"
    )
    cls = StableDiffusionPipeline
    if inpainting:
        from diffusers import StableDiffusionInpaintPipeline as cls
    return cls(
        vae=vae.eval(), text_encoder=text.eval(), tokenizer=tokenizer, unet=unet.eval(), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def tiny_sdxl_pipeline(tmp: Path):
    """A diffusers StableDiffusionXLPipeline of tiny random parts: 16×16 images, 8×8 latents, a
    CLIP-L-like and a bigG-like encoder (64 wide in 64-wide heads, as a single file implies; projection
    24), the U-Net's added embedding, 8 heads per level (what an original file of this width implies)."""
    from diffusers import AutoencoderKL as DiffusersVAE
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=8,
        use_linear_projection=True, transformer_layers_per_block=(1, 2), cross_attention_dim=128,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24 + 6 * 8, norm_num_groups=32,
    )  # fmt: skip
    vae = DiffusersVAE(
        block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=32, latent_channels=4,
        sample_size=16, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, scaling_factor=0.13025,
    )  # fmt: skip
    texts = [
        cls(CLIPTextConfig(
            hidden_size=64, num_hidden_layers=3, num_attention_heads=1, intermediate_size=37,
            vocab_size=49408, max_position_embeddings=77, hidden_act=act, projection_dim=24,
        )).eval()
        for cls, act in ((CLIPTextModel, "quick_gelu"), (CLIPTextModelWithProjection, "gelu"))
    ]  # fmt: skip
    with torch.no_grad():
        for module in (unet, vae):
            for p in module.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="trailing"
    )
    files = write_reference_files(tmp / "vocab")
    return StableDiffusionXLPipeline(
        vae=vae.eval(), text_encoder=texts[0], text_encoder_2=texts[1], unet=unet.eval(),
        tokenizer=reference_tokenizer(files), tokenizer_2=reference_tokenizer(files, pad_token="!"),
        scheduler=scheduler,
    )  # fmt: skip


def save_single_file(pipe, path: Path, dtype: torch.dtype | None = None, open_clip: bool = False) -> Path:
    """The pipeline's weights in the original single-file layout (names checked elsewhere against
    diffusers' own converters: tests/test_sd_unet.py, tests/test_autoencoder.py); an SDXL pipeline's
    text encoders under ``conditioner.embedders.{0,1}``."""
    config = unet_config_from_diffusers(dict(pipe.unet.config))
    diffusers_map, original_map = unet_map(config, "diffusers"), unet_map(config, "original")
    theirs, tensors = pipe.unet.state_dict(), {}
    for key in UNet(config).state_dict():
        for d, o in zip(diffusers_map.entries[key], original_map.entries[key], strict=True):
            tensors[f"model.diffusion_model.{o}"] = theirs[d]
    vae_state = pipe.vae.state_dict()
    vae_config = vae_config_from_diffusers(dict(pipe.vae.config))
    levels = len(vae_config.channels)
    for ours, tensor in vae_from_diffusers(vae_state, vae_config).items():
        name = original_name(ours, levels)
        is_attention = ".mid.attn_1." in name and name.endswith(".weight") and tensor.ndim == 2
        tensors[f"first_stage_model.{name}"] = tensor[:, :, None, None] if is_attention else tensor
    if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL: ViT-L as is, bigG in OpenCLIP's names
        for key, tensor in pipe.text_encoder.state_dict().items():
            tensors[f"conditioner.embedders.0.transformer.{key}"] = tensor
        text = open_clip_names(pipe.text_encoder_2)
        tensors.update({f"conditioner.embedders.1.model.{k}": v for k, v in text.items()})
    elif open_clip:  # SD 2: OpenCLIP's names
        text = open_clip_names(pipe.text_encoder)
        tensors.update({f"cond_stage_model.model.{k}": v for k, v in text.items()})
    else:
        for key, tensor in pipe.text_encoder.state_dict().items():
            name = key if key.startswith("text_model.") else f"text_model.{key}"
            tensors[f"cond_stage_model.transformer.{name}"] = tensor
    tensors["alphas_cumprod"] = pipe.scheduler.alphas_cumprod.clone()
    save_file({k: (v if dtype is None else v.to(dtype)).contiguous() for k, v in tensors.items()}, str(path))
    return path


def open_clip_names(text_model) -> dict:
    """A transformers CLIP text model's tensors under OpenCLIP's names (SD 2 single files), q/k/v fused
    into in_proj (checked against diffusers' own converter in tests/test_stable_diffusion.py)."""
    state = {k.removeprefix("text_model."): v for k, v in text_model.state_dict().items()}
    projection = state.pop("text_projection.weight", None)  # OpenCLIP multiplies from the right
    out = {} if projection is None else {"text_projection": projection.T.contiguous()}
    out |= {
        "token_embedding.weight": state["embeddings.token_embedding.weight"],
        "positional_embedding": state["embeddings.position_embedding.weight"],
        "ln_final.weight": state["final_layer_norm.weight"],
        "ln_final.bias": state["final_layer_norm.bias"],
    }
    layers = {int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")}
    for i in sorted(layers):
        ours, theirs = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for leaf in ("weight", "bias"):
            out[f"{theirs}ln_1.{leaf}"] = state[f"{ours}layer_norm1.{leaf}"]
            out[f"{theirs}ln_2.{leaf}"] = state[f"{ours}layer_norm2.{leaf}"]
            out[f"{theirs}attn.out_proj.{leaf}"] = state[f"{ours}self_attn.out_proj.{leaf}"]
            out[f"{theirs}mlp.c_fc.{leaf}"] = state[f"{ours}mlp.fc1.{leaf}"]
            out[f"{theirs}mlp.c_proj.{leaf}"] = state[f"{ours}mlp.fc2.{leaf}"]
            qkv = [state[f"{ours}self_attn.{p}_proj.{leaf}"] for p in "qkv"]
            out[f"{theirs}attn.in_proj_{leaf}"] = torch.cat(qkv)
    return out
