"""Pixels ↔ the space a model samples in: the identity, or an autoencoder's latents × a scale
(latent diffusion, Rombach et al. 2022). Samplers never know which: it sits at the edges."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..components import load_component
from ..nets.autoencoder import AutoencoderKL
from ..nets.tiles import Tiling

# tile=None ("auto") decodes and encodes in tiles above this many pixels per image: 1024² untiled
# needs ~4× the decoder activations of a 512² tile (benchmarks/sd_speed_memory.py measures it).
AUTO_TILE_PIXELS = 1024 * 1024


class LatentSpace:
    """Identity (``autoencoder=None``) or ``autoencoder.encode(images) · scale`` / its inverse.

    The autoencoder is any component with ``encode(images) → latents`` and ``decode(latents) →
    images`` (images [B, C, H, W] in [-1, 1]); it stays frozen. An ``AutoencoderKL`` can also work in
    overlapping tiles of ``self.tiling`` (``tile=True``; ``None``: above ``AUTO_TILE_PIXELS``).
    """

    def __init__(self, autoencoder: nn.Module | None = None, scale: float = 1.0):
        if autoencoder is not None and not (
            callable(getattr(autoencoder, "encode", None)) and callable(getattr(autoencoder, "decode", None))
        ):
            raise ValueError(f"a {type(autoencoder).__name__} has no encode/decode: it is not an autoencoder")
        self.autoencoder, self.scale = autoencoder, scale
        self.tiling = Tiling()  # the tiles used when tiling
        if autoencoder is not None:
            autoencoder.eval().requires_grad_(False)
        self._shapes: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._preview_map: Tensor | None = None  # [c + 1, C]: latent channels (+ bias) → image channels

    @classmethod
    def from_folder(cls, path: str, scale: float) -> LatentSpace:
        """The identity for an empty ``path``, else the saved autoencoder component at ``path``."""
        if not path:
            return cls()
        module = load_component(path)
        try:
            return cls(module, scale)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    @property
    def is_identity(self) -> bool:
        return self.autoencoder is None

    def to(self, *args, **kwargs) -> LatentSpace:
        if self.autoencoder is not None:
            self.autoencoder.to(*args, **kwargs)
        return self

    def encode(self, images: Tensor, tile: bool | None = None) -> Tensor:
        """Images [B, C, H, W] in [-1, 1] → what the model samples, [B, *sample_shape]; ``tile``: in
        tiles (True), whole (False), or in tiles above ``AUTO_TILE_PIXELS`` (None)."""
        if self.autoencoder is None:
            return images
        tiling = self._tiling(images.shape[-2] * images.shape[-1], tile)
        with torch.no_grad():
            if tiling is None:
                return self.autoencoder.encode(images) * self.scale
            return self.autoencoder.encode(images, tiling) * self.scale

    def decode(self, latents: Tensor, tile: bool | None = None) -> Tensor:
        """What the model samples → images [B, C, H, W] in [-1, 1] (not clamped); ``tile`` as in
        ``encode``."""
        if self.autoencoder is None:
            return latents
        tiling = self._tiling(latents.shape[-2] * latents.shape[-1] * self.factor**2, tile)
        with torch.no_grad():
            if tiling is None:
                return self.autoencoder.decode(latents / self.scale)
            return self.autoencoder.decode(latents / self.scale, tiling)

    def _tiling(self, pixels: int, tile: bool | None) -> Tiling | None:
        """The tiles for an image of ``pixels`` pixels, or None to work on it whole."""
        tiles = isinstance(self.autoencoder, AutoencoderKL)
        if tile is None:
            return self.tiling if tiles and pixels > AUTO_TILE_PIXELS else None
        if tile and not tiles:
            name = type(self.autoencoder).__name__
            raise ValueError(f"a {name} cannot work in tiles (an AutoencoderKL can)")
        return self.tiling if tile else None

    def preview(self, latents: Tensor) -> Tensor:
        """A cheap picture of latents [B, c, h, w] for live previews: one linear map per latent space
        from channels to colours, fitted once, enlarged to the image size [B, C, H, W] (the final image
        is the full ``decode``)."""
        if self.autoencoder is None:
            return latents
        weights = self._fitted_map().to(latents)
        rgb = torch.einsum("bchw,cd->bdhw", latents, weights[:-1]) + weights[-1][None, :, None, None]
        return F.interpolate(rgb, scale_factor=self.factor, mode="nearest")

    @property
    def factor(self) -> int:
        """How many image pixels one latent cell covers per side."""
        return getattr(getattr(self.autoencoder, "config", None), "downsampling", 1)

    def _fitted_map(self) -> Tensor:
        """Least squares from latents to the images they encode, over a few smooth random colour pictures."""
        if self._preview_map is None:
            g = torch.Generator().manual_seed(0)
            channels = int(getattr(self.autoencoder.config, "in_channels", 3))
            size = 8 * self.factor
            coarse = torch.rand(8, channels, 4, 4, generator=g) * 2 - 1  # [8, C, 4, 4] colour fields
            images = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
            device = _device_of(self.autoencoder)
            latents = self.encode(images.to(device)).float().cpu()  # [8, c, 8, 8]
            targets = F.avg_pool2d(images, self.factor)  # [8, C, 8, 8]: what each latent cell shows
            x = torch.cat(
                [latents.movedim(1, -1).reshape(-1, latents.shape[1]), torch.ones(latents[:, 0].numel(), 1)],
                1,
            )
            y = targets.movedim(1, -1).reshape(-1, channels)
            x, y = x.double(), y.double()
            gram = x.T @ x  # ridge-regularised normal equations: stable if a latent channel is constant
            ridge = 1e-8 * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
            self._preview_map = torch.linalg.solve(gram + ridge, x.T @ y).float()  # [c + 1, C]
        return self._preview_map

    def sample_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of one sample for images of ``image_shape`` (C, H, W)."""
        if self.autoencoder is None:
            return tuple(image_shape)
        if image_shape not in self._shapes:  # asked of the autoencoder once per image shape
            shape_of = getattr(self.autoencoder, "latent_shape", None)
            if callable(shape_of):
                self._shapes[image_shape] = tuple(shape_of(image_shape))
            else:
                probe = torch.zeros(1, *image_shape, device=_device_of(self.autoencoder))
                self._shapes[image_shape] = tuple(self.encode(probe).shape[1:])
        return self._shapes[image_shape]


def _device_of(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))
