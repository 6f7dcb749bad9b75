"""Tiled autoencoding: the KL autoencoder's tiled decode/encode against diffusers' tiling with the same
tile and overlap; the automatic choice; the option through the pipeline and `noisecraft generate`."""

from __future__ import annotations

import pytest
import torch
from sd_helpers import tiny_sd_pipeline
from test_autoencoder import TOLERANCE, max_diff, ours_from, reference_vae

from noisecraft.model import OptionError, SamplingOptions
from noisecraft.model import latent as latent_module
from noisecraft.model.latent import LatentSpace
from noisecraft.nets.tiles import Tiling, tile_starts

diffusers = pytest.importorskip("diffusers")

TILE = 16  # pixels; f = 2, so 8 latent cells, overlapping by 2 (a quarter, diffusers' factor)


def tiled_reference(channels=(8, 16), layers=1):
    """(diffusers' VAE tiling TILE-pixel tiles, ours with the same weights) — f = 2."""
    ref = reference_vae(channels, layers)
    ref.tile_sample_min_size, ref.tile_latent_min_size = TILE, TILE // 2
    ref.enable_tiling()
    return ref, ours_from(ref, channels, layers)


# Latent sizes whose last tile is wider than the overlap: diffusers adds no sliver tile there.
@pytest.mark.parametrize("height, width", [(15, 15), (10, 22)])
def test_tiled_decode_equals_diffusers_tiled_decode(height, width):
    ref, ours = tiled_reference()
    z = torch.randn(2, 4, height, width, generator=torch.Generator().manual_seed(height))
    with torch.no_grad():
        got, want = ours.decode(z, Tiling(TILE, TILE // 4)), ref.tiled_decode(z).sample
        whole = ours.decode(z)
    assert max_diff(got, want) <= TOLERANCE
    assert max_diff(got, whole) > 0.01  # tiles were used: each tile's group norms see only itself


def test_tiled_encode_equals_diffusers_tiled_encode():
    ref, ours = tiled_reference((8, 16, 16), 2)  # f = 4: 4 latent cells per tile, overlapping by 1
    ref.tile_latent_min_size = TILE // 4
    x = torch.rand(1, 3, 36, 56, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        mean, logvar = ours.posterior(x, Tiling(TILE, TILE // 4))
        want_mean, want_logvar = ref._tiled_encode(x).chunk(2, dim=1)
    assert max_diff(mean, want_mean) <= TOLERANCE
    assert max_diff(logvar, want_logvar.clamp(-30, 20)) <= TOLERANCE


def test_one_tile_is_the_whole_decode():
    _, ours = tiled_reference()
    z = torch.randn(1, 4, 8, 6, generator=torch.Generator().manual_seed(0))  # fits in one tile
    with torch.no_grad():
        assert torch.equal(ours.decode(z, Tiling(TILE, TILE // 4)), ours.decode(z))


def test_tiles_cover_the_axis_without_a_sliver():
    assert tile_starts(8, 8, 6) == [0]
    assert tile_starts(15, 8, 6) == [0, 6, 12]
    assert tile_starts(14, 8, 6) == [0, 6]  # the second tile reaches the border: no third
    for length in range(1, 40):
        starts = tile_starts(length, 8, 6)
        assert starts[-1] + 8 >= length and (len(starts) == 1 or starts[-2] + 8 < length)


@pytest.mark.parametrize("size, overlap", [(0, 0), (16, 9), (16, -1), (16.0, 4)])
def test_bad_tilings_are_refused(size, overlap):
    with pytest.raises(ValueError, match="Tiling"):
        Tiling(size, overlap)


def test_tiles_must_be_whole_latent_cells():
    _, ours = tiled_reference()
    with pytest.raises(ValueError, match="multiples of 2"):
        ours.decode(torch.zeros(1, 4, 20, 20), Tiling(15, 3))


def test_auto_tiles_only_large_images(monkeypatch):
    _, ours = tiled_reference()
    space = LatentSpace(ours, scale=0.5)
    space.tiling = Tiling(TILE, TILE // 4)
    monkeypatch.setattr(latent_module, "AUTO_TILE_PIXELS", 20 * 20)
    g = torch.Generator().manual_seed(0)
    small = torch.randn(1, 4, 10, 10, generator=g)  # 20² = 400 pixels: whole
    large = torch.randn(1, 4, 15, 15, generator=g)  # 30² = 900 pixels: tiles
    with torch.no_grad():
        assert torch.equal(space.decode(small), space.decode(small, tile=False))
        assert torch.equal(space.decode(large), ours.decode(large / 0.5, space.tiling))
        assert not torch.equal(space.decode(large), space.decode(large, tile=False))
        image = torch.rand(1, 3, 30, 30, generator=g) * 2 - 1
        assert torch.equal(space.encode(image), ours.encode(image, space.tiling) * 0.5)


def test_tile_option_is_a_boolean():
    assert SamplingOptions(tile=True).tile is True and SamplingOptions().tile is None
    with pytest.raises(OptionError, match="tile"):
        SamplingOptions(tile="yes")


def test_the_pipeline_decodes_in_tiles_as_diffusers_does(tmp_path):
    """A whole generation with tile=True equals diffusers' StableDiffusionPipeline with its VAE tiling
    at the same tile size (8 pixels, overlap 2); tile=False is the whole decode."""
    from noisecraft.noise import SeededNoise
    from noisecraft.pipeline import Pipeline

    pipe = tiny_sd_pipeline(tmp_path)
    pipe.save_pretrained(tmp_path / "folder", safe_serialization=True)
    pipe.vae.tile_sample_min_size, pipe.vae.tile_latent_min_size = 8, 4
    pipe.vae.enable_tiling()
    ours = Pipeline.load(tmp_path / "folder")
    ours.latent.tiling = Tiling(8, 2)  # 8×8 latents: tiles start at 0, 3 and 6
    options = dict(steps=3, sampler="euler", schedule="trailing", guidance=5.0, seed=7)
    with torch.no_grad():
        want = pipe(["a cat"], num_inference_steps=3, guidance_scale=5.0, output_type="pt", height=16,
                    width=16, latents=SeededNoise([7]).randn((4, 8, 8))).images  # fmt: skip
    tiled = (ours.sample(["a cat"], tile=True, **options) / 2 + 0.5).clamp(0, 1)
    whole = (ours.sample(["a cat"], tile=False, **options) / 2 + 0.5).clamp(0, 1)
    assert max_diff(tiled, want) <= 1e-4
    assert max_diff(tiled, whole) > 0.01


def test_generate_tile_flag_is_recorded(tmp_path):
    from noisecraft.cli import main
    from noisecraft.images import read_png_metadata

    pipe = tiny_sd_pipeline(tmp_path)
    pipe.save_pretrained(tmp_path / "folder", safe_serialization=True)
    args = ["a cat", "--model", str(tmp_path / "folder"), "--steps", "1", "--quiet"]
    assert main(["generate", *args, "--tile", "--out", str(tmp_path / "on")]) == 0
    assert main(["generate", *args, "--no-tile", "--out", str(tmp_path / "off")]) == 0
    (on,), (off,) = (tmp_path / "on").glob("*.png"), (tmp_path / "off").glob("*.png")
    assert read_png_metadata(on)["tile"] is True and read_png_metadata(off)["tile"] is False
