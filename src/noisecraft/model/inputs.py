"""A request and its inputs as batches: its prompts, the init image of image-to-image and the mask of
inpainting."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image
from torch import Tensor

from ..images import from_pil, mask_from_pil
from .control import ControlSpec
from .options import OptionError, SamplingOptions
from .settings import MAX_IMAGES


def init_batch(image: Image.Image | Tensor, batch: int, channels: int, size: tuple[int, int]) -> Tensor:
    """An init image (PIL or [C, H, W] / [1, C, H, W] tensor in [-1, 1]) as [B, C, H, W]."""
    shape = (channels, size[1], size[0])  # (C, H, W) from (width, height)
    if isinstance(image, Image.Image):
        image = from_pil(image, shape[0], size)
    if not isinstance(image, Tensor) or image.ndim not in (3, 4):
        raise ValueError("the init image must be a PIL image or a [C, H, W] tensor")
    image = image[None] if image.ndim == 3 else image
    if tuple(image.shape[1:]) != shape:
        raise ValueError(f"init image has shape {tuple(image.shape[1:])}, the request makes {shape}")
    return image.float().expand(batch, *shape)


def mask_batch(mask: Image.Image | Tensor, batch: int, size: tuple[int, int]) -> Tensor:
    """A mask (PIL of any size, white = repaint; or a tensor in [0, 1]) as [B, 1, H, W] in {0, 1}."""
    width, height = size
    if isinstance(mask, Image.Image):
        mask = mask_from_pil(mask, size)  # resized to the request's size here, for every caller
    if not isinstance(mask, Tensor) or tuple(mask.shape[-2:]) != (height, width):
        shown = "×".join(map(str, mask.shape[-2:][::-1])) if isinstance(mask, Tensor) else "not an image"
        raise ValueError(f"mask is {shown}: it must be a {width}×{height} image or tensor")
    return (mask.reshape(-1, 1, height, width) > 0.5).float().expand(batch, 1, height, width)


def expand_prompts(prompts: str | list[str], num_images: int) -> list[str]:
    """Each prompt repeated ``num_images`` times, checked."""
    prompts = [prompts] if isinstance(prompts, str) else prompts
    if not isinstance(prompts, list | tuple) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a string or a non-empty list of strings")
    if isinstance(num_images, bool) or int(num_images) != num_images or num_images < 1:
        raise ValueError(f"num_images must be a positive integer, got {num_images}")
    if len(prompts) * num_images > MAX_IMAGES:
        count = len(prompts) * num_images
        raise OptionError("num_images", f"{count} images in one request; at most {MAX_IMAGES}")
    return [p for p in prompts for _ in range(num_images)]


@dataclass(frozen=True)
class GenerationRequest:
    """One job: prompts × num_images images; an init image makes it image-to-image, a mask inpainting."""

    prompts: str | list[str]
    negative_prompt: str | None = None
    num_images: int = 1
    options: SamplingOptions = field(default_factory=SamplingOptions)
    init: Image.Image | Tensor | None = None  # PIL, or [C, H, W] / [B, C, H, W] in [-1, 1]
    mask: Image.Image | Tensor | None = None  # white (1) = repaint; needs init
    max_evaluations: int | None = None  # network evaluations allowed (a server's limit); None: no limit
    controls: tuple[ControlSpec, ...] = ()  # control maps with their branches, scales and windows

    def __post_init__(self) -> None:
        if self.mask is not None and self.init is None:
            raise OptionError("mask", "inpainting needs an init image too: the image to repaint")
