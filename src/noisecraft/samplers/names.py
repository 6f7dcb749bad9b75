"""Sampler names as people type them: ours ('dpmpp_2m'), AUTOMATIC1111's ('DPM++ 2M', 'Euler a') and
their older aliases ('k_euler_a'); one table for the CLI, the Python API and both HTTP APIs."""

from __future__ import annotations

# Our name → (A1111 display name, older A1111 aliases). Samplers A1111 lacks show under our name.
A1111_SAMPLERS: dict[str, tuple[str, list[str]]] = {
    "euler_ancestral": ("Euler a", ["k_euler_a", "k_euler_ancestral"]),
    "euler": ("Euler", ["k_euler"]),
    "lms": ("LMS", ["k_lms"]),
    "heun": ("Heun", ["k_heun"]),
    "dpmpp_2m": ("DPM++ 2M", ["k_dpmpp_2m"]),
    "dpmpp_2s_ancestral": ("DPM++ 2S a", ["k_dpmpp_2s_a"]),
    "dpmpp_2m_sde": ("DPM++ 2M SDE", ["k_dpmpp_2m_sde"]),
    "dpmpp_3m_sde": ("DPM++ 3M SDE", ["k_dpmpp_3m_sde"]),
    "ddim": ("DDIM", []),
    "ddpm": ("DDPM", []),
    "unipc": ("UniPC", []),
}


def sampler_label(name: str) -> str:
    """The A1111 display name of one of our samplers (our name where A1111 has none)."""
    return A1111_SAMPLERS.get(name, (name, []))[0]


def canonical_sampler(name: str, known: list[str] | tuple[str, ...]) -> str:
    """Our name for an A1111 name, alias or our own name (case-insensitive; A1111 before 1.6 spelt
    the schedule into the name, 'DPM++ 2M Karras'); ValueError listing the valid names otherwise."""
    if isinstance(name, str):
        wanted = name.strip().lower().removesuffix(" karras")
        for ours in known:
            label, aliases = A1111_SAMPLERS.get(ours, (ours, []))
            if wanted in (ours, label.lower(), *aliases):
                return ours
    valid = ", ".join(sorted(known))
    raise ValueError(f"unknown sampler {name!r}; valid: {valid} (or their A1111 names, e.g. 'Euler a')")
