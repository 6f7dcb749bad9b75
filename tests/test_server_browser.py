"""The web page in a real browser: Debian's headless Chromium, driven by Playwright, generates an image,
watches the preview change at every step, inpaints with the brush and draws a control map. Screenshots go
to outputs/test-artifacts/."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_pipeline, make_tiny_sound_pipeline, save_tiny_control_model
from PIL import Image
from server_helpers import decode_png, pixels, serve

from noisecraft.model import ControlSpec, SamplingOptions
from noisecraft.pipeline import GenerationRequest, Pipeline
from noisecraft.server.app import create_app
from noisecraft.server.limits import Limits
from noisecraft.server.models import ModelRegistry
from noisecraft.text.vocabulary import VocabularyTextEncoder

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "outputs" / "test-artifacts"

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None,
    reason=f"BROWSER TEST SKIPPED: no {CHROMIUM}; install Debian's chromium (apt-get install chromium)",
)

# Counts every distinct image the preview shows, from the page's own DOM, independent of app.js.
WATCH_PREVIEW = """() => {
  window.previewSources = new Set();
  const preview = document.getElementById('preview');
  new MutationObserver(() => window.previewSources.add(preview.src))
    .observe(preview, {attributes: true, attributeFilter: ['src']});
}"""


@pytest.fixture(scope="module")
def control_pipe(tmp_path_factory) -> Pipeline:
    """The tiny model with a control branch of its own (the page shows its control panel)."""
    return Pipeline.load(save_tiny_control_model(tmp_path_factory.mktemp("browser") / "ctl"))


@pytest.fixture(scope="module")
def url(control_pipe):
    tiny = make_tiny_pipeline()
    vocabulary = VocabularyTextEncoder.build(tiny.text_encoder, ["two-hump camel"])
    heard = Pipeline(tiny.net, vocabulary, dataclasses.replace(tiny.config, name="vocab"))
    models = ModelRegistry(
        {"tiny": tiny, "ctl": control_pipe, "sound": make_tiny_sound_pipeline(), "vocab": heard}
    )
    with serve(create_app(models, Limits(max_steps=200))) as base:
        yield base


@pytest.fixture(scope="module")
def page(url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.on("requestfailed", lambda r: _stream_end(r) or errors.append(f"request failed: {r.url}"))
        page.goto(url)
        yield page
        browser.close()
        assert not errors, errors  # no script errors, nothing the page could not load


# Elements sticking out of the viewport sideways (the page would scroll horizontally).
OVERFLOWING = """() => {
  const width = document.documentElement.clientWidth;
  return [...document.querySelectorAll('body *')].filter((e) => {
    const r = e.getBoundingClientRect();
    return r.width > 0 && (r.right > width + 0.5 || r.left < -0.5);
  }).map((e) => e.tagName + (e.id ? '#' + e.id : ''));
}"""
BROKEN_PREVIEW = """() => { const p = document.getElementById('preview');
  return getComputedStyle(p).visibility !== 'hidden' && !(p.complete && p.naturalWidth > 0); }"""


def _stream_end(request) -> bool:
    """Chromium's DevTools reports some finished event-stream fetches as aborted (net::ERR_ABORTED) at
    random, after every byte arrived; the tests check what each stream delivered themselves."""
    return request.url.endswith("/v1/generate") and request.failure == "net::ERR_ABORTED"


def test_generate_shows_every_step_then_the_image(page):
    page.wait_for_selector("#model option[value=tiny]", state="attached")
    assert page.is_hidden("#control-panel")  # this model has no control branch
    assert not page.evaluate(BROKEN_PREVIEW)  # before the first run: an empty box, not a broken image
    assert (
        page.input_value("#sampler") == "euler" and page.input_value("#steps") == "4"
    )  # the model's defaults
    schedules = page.eval_on_selector_all("#schedule option", "options => options.map(o => o.value)")
    assert page.input_value("#schedule") == "karras" and "beta" in schedules and "uniform" not in schedules
    page.select_option("#schedule", "beta")  # a pixel model: only the schedules that need no σ table
    page.fill("#prompt", "a red circle")
    page.fill("#steps", "12")
    page.fill("#seed", "7")
    page.evaluate(WATCH_PREVIEW)
    page.click("#generate")
    page.wait_for_selector("#gallery figure img")
    assert page.evaluate("window.previewSources.size") >= 3  # the preview changed at least three times
    assert int(page.get_attribute("#preview", "data-updates")) == 12  # one update per step
    assert "step 12/12" in page.inner_text("#step-info")
    assert not page.evaluate(BROKEN_PREVIEW)
    assert page.evaluate("document.getElementById('preview').naturalWidth") == 8
    card = page.inner_text("#gallery figure")
    assert "a red circle" in card and "7" in card and "euler" in card
    link = page.locator("#gallery figure a[download]")
    assert link.get_attribute("download") == "noisecraft-7.png"
    download = decode_png(link.get_attribute("href"))
    assert download.size == (8, 8) and "beta" in card
    assert "Schedule type: Beta, CFG scale" in download.info["parameters"]  # A1111's text, for other tools
    page.select_option("#schedule", "karras")  # the later tests compare with the model's defaults
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "server-page.png"), full_page=True)
    assert (ARTIFACTS / "server-page.png").stat().st_size > 10_000


def test_inpainting_with_the_brush(page):
    if page.locator("#gallery figure").count() == 0:  # run alone: make the image to start from
        page.wait_for_selector("#model option[value=tiny]", state="attached")
        page.fill("#prompt", "a red circle")
        page.click("#generate")
        page.wait_for_selector("#gallery figure img")
    page.click("#gallery figure button")  # "use as start": switches to image → image
    assert page.is_checked("input[value=img2img]")
    page.check("input[value=inpaint]")
    box = page.locator("#mask-canvas").bounding_box()
    page.mouse.move(box["x"] + 60, box["y"] + 60)
    page.mouse.down()
    page.mouse.move(box["x"] + 200, box["y"] + 180, steps=8)
    page.mouse.up()
    painted = page.evaluate(
        "() => { const c = document.getElementById('mask-canvas');"
        " const alpha = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " return alpha.filter((v, i) => i % 4 == 3 && v).length; }"
    )
    assert painted > 1000  # the brush left a stroke
    assert page.is_hidden("#strength-label") and page.is_visible("#mask-tools")
    page.fill("#seed", "8")
    page.click("#generate")
    page.wait_for_function("document.querySelectorAll('#gallery figure').length == 2")
    assert "inpainted" in page.inner_text("#gallery figure >> nth=0")
    hrefs = page.eval_on_selector_all("#gallery figure a[download]", "links => links.map(a => a.href)")
    after, before = (pixels(decode_png(h)) for h in hrefs)
    corners = (slice(None, None, 7), slice(None, None, 7))  # far from the stroke: kept exactly
    assert np.array_equal(after[corners], before[corners]) and not np.array_equal(after, before)
    page.screenshot(path=str(ARTIFACTS / "server-page-inpaint.png"), full_page=True)


def test_guidance_options_reach_the_pipeline(page):
    page.wait_for_selector("#model option[value=tiny]", state="attached")
    page.check("input[value=txt2img]")
    page.select_option("#schedule", "karras")  # the model's default, whatever an earlier test left
    page.click("#guidance-options summary")
    page.fill("#prompt", "a blue square")
    page.fill("#steps", "5")
    page.fill("#seed", "9")
    page.fill("#guidance", "3")
    page.fill("#rescale", "0.5")
    page.fill("#interval-lo", "0.5")  # "to" left empty: the model's σ_max (10)
    page.fill("#deep-cache", "2")
    count = page.locator("#gallery figure").count()
    page.click("#generate")
    page.wait_for_function(f"document.querySelectorAll('#gallery figure').length == {count + 1}")
    card = page.inner_text("#gallery figure >> nth=0")
    assert "rescale" in card and "0.5 – 10" in card and "deep cache" in card
    href = page.get_attribute("#gallery figure >> nth=0 >> a[download]", "href")
    (want,) = make_tiny_pipeline().generate(
        "a blue square",
        steps=5,
        guidance=3.0,
        seed=9,
        guidance_rescale=0.5,
        guidance_interval=(0.5, 10.0),
        deep_cache=2,
    )
    assert np.array_equal(pixels(decode_png(href)), pixels(want))


def _stroke(page, colour: str, size: str, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Drag across the control canvas with the mouse, from and to fractions of its box."""
    page.click(f"#control-colours [aria-label={colour}]")
    page.select_option("#control-size", size)
    page.locator("#control-canvas").scroll_into_view_if_needed()
    box = page.locator("#control-canvas").bounding_box()
    page.mouse.move(box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + end[0] * box["width"], box["y"] + end[1] * box["height"], steps=10)
    page.mouse.up()


def _submit(page) -> dict:
    """Press Generate; the request body the server got, once its image is in the gallery."""
    count = page.locator("#gallery figure").count()
    with page.expect_request("**/v1/generate") as sent:
        page.click("#generate")
    page.wait_for_function(f"document.querySelectorAll('#gallery figure').length == {count + 1}")
    return json.loads(sent.value.post_data)


def test_a_drawn_control_map_steers_the_image(page, control_pipe, tmp_path):
    page.wait_for_selector("#model option[value=ctl]", state="attached")
    page.check("input[value=txt2img]")
    page.select_option("#model", "ctl")
    assert page.is_visible("#control-panel") and not page.is_checked("#control-on")
    if page.is_visible("#rescale"):  # the guidance test's settings: back to the model's
        page.fill("#rescale", "0")
        page.fill("#interval-lo", "")
        page.fill("#deep-cache", "1")
    page.fill("#prompt", "a red circle")
    page.fill("#steps", "3")
    page.fill("#seed", "4")
    _stroke(page, "red", "40", (0.1, 0.5), (0.9, 0.5))
    _stroke(page, "green", "16", (0.5, 0.1), (0.5, 0.9))
    page.click("#control-undo")  # the green stroke is gone, the red one stays
    page.fill("#control-scale", "0.8")
    page.fill("#control-end", "0.5")
    body = _submit(page)
    (item,) = body["controls"]
    assert (item["type"], item["scale"], item["window"]) == ("layout", 0.8, [0, 0.5])
    drawn = decode_png(item["image"])
    sent = pixels(drawn)  # [256, 256, 3]: the canvas, red stroke on black
    assert sent.shape == (256, 256, 3)
    assert (sent[128, 40:216] == (255, 0, 0)).all()
    assert (sent[:60] == 0).all() and (sent[200:] == 0).all()  # black away from the stroke
    assert not (sent[..., 1] > 0).any()  # no green left after undo
    card = page.inner_text("#gallery figure >> nth=0")
    assert "layout × 0.8, steps 0 – 0.5" in card
    options = SamplingOptions(steps=3, seed=4, sampler="euler", schedule="karras", guidance=2.0)
    spec = ControlSpec(drawn, "layout", None, 0.8, (0.0, 0.5))
    (want,) = control_pipe.run(GenerationRequest("a red circle", options=options, controls=(spec,)))
    got = decode_png(page.get_attribute("#gallery figure >> nth=0 >> a[download]", "href"))
    assert np.array_equal(pixels(got), pixels(want))
    (plain,) = control_pipe.run(GenerationRequest("a red circle", options=options))
    assert not np.array_equal(pixels(got), pixels(plain))  # the map mattered
    page.screenshot(path=str(ARTIFACTS / "server-page-control.png"), full_page=True)

    upload = Image.new("RGB", (16, 12), "black")
    upload.paste((0, 0, 255), (4, 0, 12, 12))
    upload.save(tmp_path / "map.png")
    page.set_input_files("#control-file", str(tmp_path / "map.png"))
    page.select_option("#control-type", "segment")
    page.wait_for_function("document.getElementById('control-undo').disabled")  # the file replaced strokes
    (item,) = _submit(page)["controls"]
    assert item["type"] == "segment"
    assert np.array_equal(pixels(decode_png(item["image"])), pixels(upload))  # the file, not the canvas
    page.uncheck("#control-on")
    assert "controls" not in _submit(page)  # switched off: nothing sent
    page.select_option("#model", "tiny")
    assert page.is_hidden("#control-panel")


def test_a_phone_sized_page_fits_and_a_batch_is_in_seed_order(page):
    page.set_viewport_size({"width": 320, "height": 700})
    try:
        page.wait_for_selector("#model option[value=tiny]", state="attached")
        page.check("input[value=txt2img]")
        page.fill("#prompt", "a long prompt that wraps on a narrow screen, " * 3)
        page.fill("#steps", "2")
        page.fill("#seed", "20")
        page.fill("#num", "3")
        count = page.locator("#gallery figure").count()
        page.click("#generate")
        page.wait_for_function(f"document.querySelectorAll('#gallery figure').length == {count + 3}")
        links = "#gallery figure a[download]"
        names = page.eval_on_selector_all(links, "links => links.map(a => a.download)")
        assert names[:3] == ["noisecraft-20.png", "noisecraft-21.png", "noisecraft-22.png"]
        page.fill("#num", "1")
        if not page.is_visible("#rescale"):
            page.click("#guidance-options summary")
        page.select_option("#model", "ctl")
        page.check("input[value=inpaint]")  # the widest state: mask editor and control editor shown
        assert page.is_visible("#control-canvas") and page.is_visible("#control-colours")
        assert page.evaluate(OVERFLOWING) == []
        assert page.evaluate("document.documentElement.scrollWidth") == 320
        page.screenshot(path=str(ARTIFACTS / "server-page-320px.png"), full_page=True)
    finally:
        page.set_viewport_size({"width": 1200, "height": 900})


# Share of the preview's pixels whose red and blue differ: a coloured spectrogram, not a grey blob.
PREVIEW_COLOUR = """() => { const p = document.getElementById('preview');
  const c = Object.assign(document.createElement('canvas'), {width: p.naturalWidth, height: p.naturalHeight});
  const ctx = c.getContext('2d'); ctx.drawImage(p, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data; let n = 0;
  for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i] - d[i + 2]) > 40) n++;
  return n / (d.length / 4); }"""


def test_a_sound_model_plays_its_clip_and_previews_spectrograms(page):
    page.wait_for_selector("#model option[value=sound]", state="attached")
    assert "sound, 8 kHz" in page.inner_text("#model option[value=sound]")
    page.select_option("#model", "sound")
    page.check("input[value=txt2img]")
    page.fill("#prompt", "three loud drum hits")
    page.fill("#steps", "5")
    page.fill("#seed", "11")
    page.evaluate(WATCH_PREVIEW)
    before = int(page.get_attribute("#preview", "data-updates"))
    page.click("#generate")
    page.wait_for_selector("#gallery figure.sound audio")
    assert int(page.get_attribute("#preview", "data-updates")) == before + 5  # one update per step
    assert "spectrogram" in page.inner_text("#step-info")
    assert page.evaluate("document.getElementById('preview').naturalWidth") == 16
    assert page.evaluate(PREVIEW_COLOUR) > 0.05
    card = "#gallery figure.sound >> nth=0"
    assert page.get_attribute(f"{card} >> audio", "src").startswith("data:audio/wav;base64,")
    page.wait_for_function("document.querySelector('#gallery figure.sound audio').readyState >= 1")
    duration = page.evaluate("document.querySelector('#gallery figure.sound audio').duration")
    assert abs(duration - 0.128) < 1e-3  # 16 frames × 64 samples at 8 kHz: the browser decoded the WAV
    assert page.get_attribute(f"{card} >> a[download]", "download") == "noisecraft-11.wav"
    assert page.locator(f"{card} >> button").count() == 0  # a sound is no start image
    page.screenshot(path=str(ARTIFACTS / "server-page-sound.png"), full_page=True)
    page.select_option("#model", "tiny")


def test_docs_render_swagger_ui_and_redoc_offline(page, url):
    page.goto(f"{url}/docs")  # Swagger UI: one block per operation, from /openapi.json
    page.wait_for_selector('.opblock-summary-path[data-path="/sdapi/v1/img2img"]')
    paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.dataset.path)")
    assert {"/sdapi/v1/txt2img", "/v1/generate", "/sdapi/v1/progress"} <= set(paths)
    page.screenshot(path=str(ARTIFACTS / "server-docs.png"), full_page=False)
    page.goto(f"{url}/redoc")  # ReDoc: every schema's fields written out
    page.wait_for_selector("text=denoising_strength")
    text = page.inner_text("body")
    for field in ("init_images", "cfg_scale", "num_images", "skip_current_image"):
        assert field in text, field
    page.screenshot(path=str(ARTIFACTS / "server-redoc.png"), full_page=False)
    page.goto(url)  # the page fixture checks that nothing failed to load, the icon included


def test_a_model_with_a_vocabulary_shows_what_the_prompt_was_heard_as(page):
    page.select_option("#model", "vocab")
    page.fill("#prompt", "two-hump camel")
    page.fill("#num", "1")
    page.click("#generate")
    page.wait_for_function("document.querySelectorAll('#gallery figure').length > 0")
    assert "heard as" not in page.inner_text("#gallery figure")  # a caption itself: nothing to say
    count = page.evaluate("document.querySelectorAll('#gallery figure').length")
    page.fill("#prompt", "a camel with two humps")
    page.click("#generate")
    page.wait_for_function(f"document.querySelectorAll('#gallery figure').length > {count}")
    card = page.inner_text("#gallery figure")  # the newest first
    assert "heard as" in card and "two-hump camel" in card and "a camel with two humps" in card
    page.select_option("#model", "tiny")
