"""A request's pictures as batches: the init image of image-to-image and the mask of inpainting."""

from __future__ import annotations

from PIL import Image
from torch import Tensor

from ..images import from_pil, mask_from_pil


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
