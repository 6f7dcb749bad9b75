"""What one request may ask of the server (no imports beyond the standard library: the CLI reads it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; over a limit is a 422 naming the field, a full queue a 429."""

    queue_size: int = 16  # requests waiting (the running one not counted)
    max_batch: int = 8  # images per request: batch_size × n_iter, or num_images
    max_steps: int = 150  # sampler steps
    max_pixels: int = 1024 * 1024  # output width × height (A1111 endpoints)
    max_prompt_chars: int = 4000  # prompt and negative prompt, each
    max_body_bytes: int = 24 * 2**20  # whole request body (base64 init images included)
    max_image_pixels: int = 4096 * 4096  # a decoded init image or mask, before resizing
    max_request_pixels: int = 2 * 4096 * 4096  # one request's init images and mask together (413)
    max_decoding_pixels: int = 4 * 4096 * 4096  # admitted requests' images being decoded at once (429)

    @property
    def max_evaluations(self) -> int:
        """Network evaluations per sampler call: what ``max_steps`` steps of Heun, the costliest
        fixed-step sampler (2 per step), need; adaptive samplers stop with a 422 at this budget."""
        return 2 * self.max_steps

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
