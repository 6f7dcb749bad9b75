"""Things that hang off a sampler's ``callback(Step)``: progress bars and step-by-step pictures."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image
from tqdm.auto import tqdm

from .images import step_strip, to_pil, upscale
from .samplers import Step


def chain(*callbacks: Callable[[Step], None] | None) -> Callable[[Step], None]:
    """One callback that calls each given one in turn (None entries are skipped)."""
    active = [c for c in callbacks if c is not None]

    def call(step: Step) -> None:
        for callback in active:
            callback(step)

    return call


class ProgressBar:
    """A tqdm bar over the sampler's steps, showing σ; closes itself after the last step."""

    def __init__(self, description: str = "sampling", disable: bool | None = None):
        self.description, self.disable, self.bar = description, disable, None

    def __call__(self, step: Step) -> None:
        if self.bar is None:
            self.bar = tqdm(
                total=step.total or None, desc=self.description, unit="step", disable=self.disable
            )
        self.bar.update(1)
        self.bar.set_postfix(sigma=f"{step.sigma_next:.3g}")
        if step.total and step.index == step.total - 1:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def chosen_steps(total: int, count: int) -> list[int]:
    """``count`` step indices spread from the first to the last of ``total`` steps."""
    if total <= count:
        return list(range(total))
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


class StepRecorder:
    """Keeps, for chosen steps, the current sample x and the predicted clean image x̂0 of each image."""

    def __init__(
        self,
        every: int | None = None,
        count: int = 8,
        paint: Callable[[Image.Image], Image.Image] | None = None,
    ):
        self.every, self.count = every, count
        self.paint = paint or (lambda image: image)  # how a frame is drawn (spectrograms: coloured)
        self.frames: list[tuple[Step, list[Image.Image], list[Image.Image]]] = []
        self.all_denoised: list[list[Image.Image]] = []  # every step's x̂0, for the animation

    def __call__(self, step: Step) -> None:
        denoised = to_pil(step.denoised)
        self.all_denoised.append(denoised)
        wanted = chosen_steps(step.total, self.count) if self.every is None else None
        if (wanted is not None and step.index in wanted) or (self.every and step.index % self.every == 0):
            shown = step.x / (1 + step.sigma_next**2) ** 0.5  # VP scale: noise of std ≈ 1, not σ
            self.frames.append((step, to_pil(shown.clamp(-1, 1)), denoised))

    def strip(self, image_index: int = 0, scale: int = 4) -> Image.Image:
        """Two rows — the sample x_σ and the predicted clean image — at the recorded steps, noise → result."""
        labels = [f"{s.index + 1}: σ={s.sigma_next:.2g}" for s, _, _ in self.frames]
        rows = [[xs[image_index] for _, xs, _ in self.frames], [ds[image_index] for _, _, ds in self.frames]]
        return step_strip([[self.paint(cell) for cell in row] for row in rows], labels, scale)

    def animation(self, image_index: int = 0, scale: int = 4) -> list[Image.Image]:
        """Frames of the predicted clean image at every step, enlarged."""
        return [upscale(self.paint(frame[image_index]), scale) for frame in self.all_denoised]
