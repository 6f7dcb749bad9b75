"""Proof that the text steers the image: a tiny U-Net + built-in encoder overfits 4 captioned images,
and guided sampling of each caption returns that caption's own image."""

from __future__ import annotations

import torch

from noisecraft.denoisers import EDMPrecond
from noisecraft.guidance import ClassifierFreeGuidance, drop_conditioning
from noisecraft.losses import denoising_loss
from noisecraft.nets import UNet, UNetConfig
from noisecraft.samplers import SAMPLERS
from noisecraft.schedules import edm_lognormal, karras
from noisecraft.text.builtin import BuiltinTextEncoder, BuiltinTextEncoderConfig

CAPTIONS = ["a red square", "a green stripe", "a blue dot", "a yellow cross"]


def make_images() -> torch.Tensor:
    """Four 8×8 RGB pictures in [-1, 1], each far from the others."""
    images = -torch.ones(4, 3, 8, 8)
    images[0, 0, 1:5, 1:5] = 1  # red square, top left
    images[1, 1, 5:7, :] = 1  # green stripe, bottom
    images[2, 2, 3:6, 4:7] = 1  # blue blob, right
    images[3, 0, 3:5, :] = images[3, 1, 3:5, :] = 1  # yellow cross
    images[3, 0, :, 3:5] = images[3, 1, :, 3:5] = 1
    return images  # [4, 3, 8, 8]


def train(steps: int = 300) -> tuple[EDMPrecond, BuiltinTextEncoder]:
    torch.manual_seed(0)  # parameter initialisation
    g = torch.Generator().manual_seed(0)
    encoder = BuiltinTextEncoder(BuiltinTextEncoderConfig(dim=32, depth=1, heads=2, max_length=24))
    net = UNet(
        UNetConfig(
            image_size=8,
            channels=16,
            channel_mult=(1, 2),
            blocks_per_level=1,
            attention_resolutions=(4,),
            head_dim=16,
            text_dim=32,
            mid_attention=False,
        )
    )
    denoiser = EDMPrecond(net)
    params = [*net.parameters(), *encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    images, repeat = make_images(), 4
    x0 = images.repeat(repeat, 1, 1, 1)  # [16, 3, 8, 8]
    prompts = CAPTIONS * repeat
    for _ in range(steps):
        cond = drop_conditioning(encoder(prompts), encoder([""]), 0.15, g)
        sigma = edm_lognormal(len(x0), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        loss = denoising_loss(denoiser, x0, sigma, noise, cond).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return denoiser.eval(), encoder.eval()


def test_each_caption_returns_its_own_image():
    denoiser, encoder = train()
    images = make_images()
    with torch.no_grad():
        guided = ClassifierFreeGuidance(denoiser, scale=3.0, uncond=encoder([""]))
        sigmas = karras(16, 0.02, 40.0)
        prompts = CAPTIONS * 2  # two seeds per caption
        gens = [torch.Generator().manual_seed(100 + i) for i in range(len(prompts))]
        noise = torch.stack([torch.randn(3, 8, 8, generator=g) for g in gens]) * sigmas[0]
        out = SAMPLERS["euler"](guided, noise, sigmas, encoder(prompts))  # [8, 3, 8, 8]
        distances = torch.cdist(out.flatten(1), images.flatten(1))  # [8, 4]
    nearest = distances.argmin(1)
    expected = torch.arange(4).repeat(2)
    assert torch.equal(nearest, expected), f"nearest training image per caption: {nearest.tolist()}"
    # and clearly so: at most half as far from its own image as from the closest other one
    own = distances.gather(1, expected[:, None]).squeeze(1)
    others = distances.scatter(1, expected[:, None], float("inf")).min(1).values
    assert (own < 0.5 * others).all(), (own / others).tolist()
