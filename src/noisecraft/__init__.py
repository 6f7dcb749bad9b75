"""noisecraft: text-to-image diffusion, end to end, in one readable PyTorch library."""

from .conditioning import Conditioning
from .denoisers import Denoiser, GaussianMixtureDenoiser, score
from .samplers import SAMPLERS, Step

__version__ = "0.1.0"

__all__ = ["SAMPLERS", "Conditioning", "Denoiser", "GaussianMixtureDenoiser", "Step", "score"]
