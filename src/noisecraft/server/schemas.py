"""Request and response bodies of the HTTP API (the per-server limits are in ``limits.py``).

The A1111 bodies mirror the fields of the AUTOMATIC1111 web UI API (``/sdapi/v1``). Fields that
have no counterpart in noisecraft models are declared (so a wrongly typed value is a 422, as in
A1111) but ignored; fields no body declares are dropped, because A1111 clients send many for
extensions. The native body (``/v1/generate``) forbids unknown fields: a typo is an error.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**53 - 1  # exact in JSON numbers and JavaScript; image i uses seed + i, still < 2**63
IGNORED = "Accepted for A1111 compatibility and ignored."


# -- AUTOMATIC1111-compatible (/sdapi/v1) ------------------------------------------------------


class A1111Txt2Img(BaseModel):
    """``POST /sdapi/v1/txt2img``: the fields an A1111 client sends; see the README for each one's fate."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1: a random seed, reported in info")
    sampler_name: str | None = Field(
        None, description="an A1111 name ('Euler a') or ours ('euler_ancestral')"
    )
    sampler_index: str | None = Field(None, description="older name of sampler_name; used when it is absent")
    scheduler: str | None = Field(
        None, description="σ spacing: a label from GET /sdapi/v1/schedulers; null or 'Automatic': the model's"
    )
    batch_size: int = Field(1, ge=1, description="images per sampler call")
    n_iter: int = Field(1, ge=1, description="sampler calls; batch_size × n_iter images in all")
    steps: int | None = Field(None, ge=1, description="default: the model's")
    cfg_scale: float = Field(7.0, ge=0.0, le=100.0, description="guidance scale")
    width: int | None = Field(None, ge=0, le=8192, description="output width; null or 0: the model's size")
    height: int | None = Field(None, ge=0, le=8192, description="output height; null or 0: the model's size")
    denoising_strength: float | None = Field(None, ge=0.0, le=1.0, description="txt2img: ignored (hires fix)")
    override_settings: dict[str, Any] | None = Field(
        None, description="only sd_model_checkpoint is read: the model for this request"
    )
    script_name: str | None = Field(
        None, description="this server has no scripts: anything but null is a 422"
    )
    alwayson_scripts: dict[str, Any] | None = Field(None, description="must be empty: no scripts here")
    send_images: bool = Field(True, description="false: no images in the response, only info")
    force_task_id: str | None = Field(
        None, min_length=8, max_length=128,
        description="the job's id: /progress and /interrupt take it as id_task (default: a random one)",
    )  # fmt: skip
    # Ignored knobs (declared so that a wrong type is rejected as A1111 would).
    styles: list[str] | None = Field(None, description=IGNORED)
    subseed: int | None = Field(None, description=IGNORED)
    subseed_strength: float | None = Field(None, description=IGNORED)
    seed_resize_from_h: int | None = Field(None, description=IGNORED)
    seed_resize_from_w: int | None = Field(None, description=IGNORED)
    restore_faces: bool | None = Field(None, description=IGNORED)
    tiling: bool | None = Field(None, description=IGNORED)
    eta: float | None = Field(None, description=IGNORED)
    s_churn: float | None = Field(None, description=IGNORED)
    s_tmax: float | None = Field(None, description=IGNORED)
    s_tmin: float | None = Field(None, description=IGNORED)
    s_noise: float | None = Field(None, description=IGNORED)
    enable_hr: bool | None = Field(None, description=IGNORED + " No hires fix: see width/height.")
    override_settings_restore_afterwards: bool | None = Field(None, description=IGNORED)
    script_args: list[Any] | None = Field(None, description=IGNORED)
    save_images: bool | None = Field(None, description=IGNORED + " The server never writes files.")
    do_not_save_samples: bool | None = Field(None, description=IGNORED)
    do_not_save_grid: bool | None = Field(None, description=IGNORED)


class A1111Img2Img(A1111Txt2Img):
    """``POST /sdapi/v1/img2img``: SDEdit from init_images, or inpainting where mask is white."""

    init_images: list[str] = Field(
        ..., min_length=1, description="base64 images (data: URLs too): one, or batch_size of them"
    )
    denoising_strength: float | None = Field(
        0.75, ge=0.0, le=1.0, description="0 keeps the image, 1 ignores it; ignored when a mask is given"
    )
    mask: str | None = Field(None, description="base64 image: white is repainted, black kept exactly")
    inpainting_mask_invert: int = Field(0, ge=0, le=1, description="1: black is repainted instead")
    include_init_images: bool = Field(False, description="true: the init images follow the results")
    resize_mode: int | None = Field(
        None, description=IGNORED + " Init images are stretched to the model's size."
    )
    image_cfg_scale: float | None = Field(None, description=IGNORED)
    mask_blur: int | None = Field(None, description=IGNORED + " The mask is used as drawn.")
    mask_blur_x: int | None = Field(None, description=IGNORED)
    mask_blur_y: int | None = Field(None, description=IGNORED)
    inpainting_fill: int | None = Field(None, description=IGNORED + " The masked area starts from noise.")
    inpaint_full_res: bool | int | None = Field(None, description=IGNORED)
    inpaint_full_res_padding: int | None = Field(None, description=IGNORED)
    initial_noise_multiplier: float | None = Field(None, description=IGNORED)


class A1111Response(BaseModel):
    """The A1111 answer: base64 PNGs, the request as understood, and ``info`` as a JSON string."""

    images: list[str]
    parameters: dict[str, Any]
    info: str


class A1111Sampler(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any] = {}


class A1111Model(BaseModel):
    title: str
    model_name: str
    hash: str
    sha256: str
    filename: str
    config: str | None = None


class A1111ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class A1111Progress(BaseModel):
    progress: float = Field(description="fraction of the running job done, 0 … 1")
    eta_relative: float = Field(description="seconds left in the running job (an estimate)")
    state: A1111ProgressState
    current_image: str | None = Field(None, description="base64 PNG of the predicted clean image x̂0")
    textinfo: str | None = None
    current_task: str | None = None


class A1111Scheduler(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float = Field(-1, description="the ρ it runs at when a request sets none; -1: none")
    need_inner_model: bool = Field(False, description="follows the model's σ table where it has one")


class A1111Vae(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    filename: str


class A1111PngInfoRequest(BaseModel):
    image: str = Field("", description="a base64 PNG (or a data: URL)")


class A1111PngInfo(BaseModel):
    info: str = Field(description="A1111's parameters text ('' when the image has none)")
    items: dict[str, str] = Field(description="the image's other text chunks (noisecraft's JSON among them)")
    parameters: dict[str, str] = Field(description="the parameters text's fields, as A1111 parses them")


# -- native (/v1) --------------------------------------------------------------------------------


class ControlItem(BaseModel):
    """One control of ``POST /v1/generate``: a map steering the layout (ControlNet)."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(..., description="base64 map image; resized to the size the control needs")
    type: str = Field("layout", description="layout | edges | scribble | canny | segment (see the README)")
    scale: float = Field(1.0, description="strength; 0: the image without the control, bit for bit")
    window: tuple[float, float] = Field((0.0, 1.0), description="[start, end] as fractions of the steps")


class GenerateRequest(BaseModel):
    """``POST /v1/generate``: text to image, image to image (init_image) or inpainting (+ mask)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., description="what to draw (the empty string is the unconditional prompt)")
    negative_prompt: str | None = Field(None, description="what the image should not be")
    model: str | None = Field(None, description="a name from GET /v1/models; default: the first")
    sampler: str | None = Field(None, description="a name from GET /v1/samplers; default: the model's")
    steps: int | None = Field(None, description="default: the model's")
    schedule: str | None = Field(
        None,
        description="σ spacing: karras, exponential, polyexponential, sgm_uniform, beta "
        "(SD also: uniform, leading, trailing); default: the model's",
    )
    width: int | None = Field(None, description="image width in pixels; default: the model's")
    height: int | None = Field(None, description="image height in pixels; default: the model's")
    guidance: float | None = Field(None, ge=0.0, le=100.0, description="CFG scale")
    guidance_rescale: float | None = Field(
        None, description="guidance rescale φ in [0, 1] (Lin et al. 2023); null or 0: off"
    )
    guidance_interval: tuple[float, float] | None = Field(
        None, description="[lo, hi]: guide only where lo < σ ≤ hi (Kynkäänniemi et al. 2024); null: every σ"
    )
    deep_cache: int | None = Field(
        None, description="U-Nets: full network every N-th step, outer blocks on kept deep features between "
        "(DeepCache, Ma et al. 2023); null or 1: off",
    )
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="image i uses seed + i; -1: random")
    num_images: int = Field(1, ge=1, description="images drawn in one batch")
    init_image: str | None = Field(None, description="base64 image to start from (SDEdit)")
    strength: float | None = Field(None, description="init_image: 0 keeps it, 1 ignores it; default 0.6")
    mask: str | None = Field(None, description="base64 image, with init_image: white is repainted")
    tile: bool | None = Field(
        None, description="latent models: decode (and encode) in overlapping tiles; null: above 1024² pixels"
    )
    controls: list[ControlItem] = Field(
        default_factory=list, description="maps steering the layout with the model's own control branch"
    )


class ModelInfo(BaseModel):
    name: str
    image_size: int
    channels: int
    steps: int
    sampler: str
    schedule: str = Field(description="the σ spacing requests get by default")
    schedules: list[str] = Field(description="the σ spacings this model can use")
    guidance: float
    sigma_max: float = Field(description="the σ sampling starts from")
    weights: str = Field(description="first 16 hex digits of SHA-256 over the weights")
    text_conditioned: bool
    control: bool = Field(description="has a control branch of its own: requests may send ``controls``")
    default: bool
    modality: str = Field("image", description='what it makes: "image", or "audio" (WAVs of spectrograms)')
    sample_rate: int | None = Field(None, description="audio models: the WAVs' sample rate (Hz)")


class ServerStatus(BaseModel):
    queued: int
    running: bool
    completed: int
    cancelled: int
    interrupted: int
    failed: int
    limits: dict[str, int]
