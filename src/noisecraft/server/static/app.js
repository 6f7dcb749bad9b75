// noisecraft web page: POST /v1/generate and draw every Server-Sent Event as it arrives.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], controller: null, initImage: null };

// -- set-up: models and samplers from the server ------------------------------------------------

async function loadChoices() {
  const [models, samplers] = await Promise.all([getJSON("/v1/models"), getJSON("/v1/samplers")]);
  state.models = models;
  for (const m of models) {
    const kind = m.modality === "audio" ? `sound, ${m.sample_rate / 1000} kHz` : `${m.image_size}px`;
    $("model").add(new Option(`${m.name} (${kind})`, m.name, m.default, m.default));
  }
  for (const s of samplers) $("sampler").add(new Option(s, s));
  applyModelDefaults();
}

function currentModel() {
  return state.models.find((m) => m.name === $("model").value);
}

function applyModelDefaults() {
  const model = currentModel();
  if (!model) return;
  $("sampler").value = model.sampler;
  $("schedule").replaceChildren(...model.schedules.map((name) => new Option(name, name)));
  $("schedule").value = model.schedule;
  $("steps").value = model.steps;
  $("guidance").value = model.guidance;
  showControl(model);
}

async function getJSON(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

// -- generating -----------------------------------------------------------------------------------

function mode() {
  return document.querySelector("input[name=mode]:checked").value;
}

function requestBody() {
  const number = (id) => Number($(id).value);
  const body = {
    prompt: $("prompt").value,
    negative_prompt: $("negative").value || null,
    model: $("model").value || null,
    sampler: $("sampler").value || null,
    schedule: $("schedule").value || null,
    steps: number("steps"),
    guidance: number("guidance"),
    seed: number("seed"),
    num_images: number("num"),
  };
  if (number("rescale") > 0) body.guidance_rescale = number("rescale");
  if (number("deep-cache") > 1) body.deep_cache = number("deep-cache");
  if ($("interval-lo").value !== "" || $("interval-hi").value !== "") {
    const hi = $("interval-hi").value === "" ? currentModel().sigma_max : number("interval-hi");
    body.guidance_interval = [number("interval-lo"), hi];
  }
  if (mode() !== "txt2img") {
    if (!state.initImage) throw new Error("choose a start image first");
    body.init_image = state.initImage;
    if (mode() === "img2img") body.strength = number("strength");
    else body.mask = maskDataURL();
  }
  const controls = controlItems();
  if (controls.length) body.controls = controls;
  return body;
}

async function generate(event) {
  event.preventDefault();
  let body;
  try {
    body = requestBody();
  } catch (err) {
    return setStatus(err.message, true);
  }
  state.controller = new AbortController();
  busy(true);
  setStatus("queued…");
  try {
    const response = await fetch("/v1/generate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: state.controller.signal,
    });
    if (!response.ok) return setStatus(await errorText(response), true);
    await readEvents(response, handleEvent);
  } catch (err) {
    setStatus(err.name === "AbortError" ? "stopped" : `failed: ${err.message}`, err.name !== "AbortError");
  } finally {
    busy(false);
    state.controller = null;
  }
}

async function errorText(response) {
  const retry = response.headers.get("Retry-After");
  let detail = `HTTP ${response.status}`;
  try {
    const data = await response.json();
    detail = Array.isArray(data.detail) ? data.detail.map((d) => d.msg).join("; ") : data.detail;
  } catch (_) { /* not JSON */ }
  return retry ? `${detail} (retry in ${retry} s)` : detail;
}

// Server-Sent Events over a fetch body: blocks separated by a blank line, "event:" and "data:" fields.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n/g, "\n");  // CRLF lines too
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) kind = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(kind, JSON.parse(data.join("\n")));
    }
  }
}

function handleEvent(kind, data) {
  if (kind === "queued") {
    setStatus(data.position > 1 ? `queued: ${data.position - 1} ahead` : "starting…");
  } else if (kind === "step") {
    const preview = $("preview");
    preview.src = data.preview;
    preview.dataset.updates = String(Number(preview.dataset.updates) + 1);
    const what = currentModel()?.modality === "audio" ? "spectrogram (time →, pitch ↑) · " : "";
    $("step-info").textContent = `${what}step ${data.index + 1}/${data.total} · σ ${data.sigma.toPrecision(3)} → ${data.sigma_next.toPrecision(3)}`;
    $("progress").value = (data.index + 1) / data.total;
    setStatus("sampling…");
  } else if (kind === "done") {
    const heard = (data.heard || [])[0];  // a model with a vocabulary: the caption the prompt matched
    $("gallery").prepend(...data.images.map((image) => galleryCard(image, data.model, heard)));  // seed order
    const sounds = data.images.some((image) => image.audio);
    setStatus(`done: ${data.images.length} ${sounds ? "clip" : "image"}(s)`);
  } else if (kind === "cancelled") {
    setStatus("cancelled by the server", true);
  } else if (kind === "error") {
    setStatus(`error ${data.status}: ${data.detail}`, true);
  }
}

function busy(on) {
  $("generate").disabled = on;
  $("stop").disabled = !on;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// -- gallery ------------------------------------------------------------------------------------

function galleryCard(image, model, heard) {
  const p = image.parameters || {};
  const card = document.createElement("figure");
  card.className = image.audio ? "card sound" : "card";
  const img = document.createElement("img");
  img.src = image.image;  // a sound model's: the clip's spectrogram
  img.alt = image.audio ? `spectrogram of ${p.prompt || "the clip"}` : p.prompt || "generated image";
  const list = document.createElement("dl");
  const rows = [["prompt", p.prompt], ["negative", p.negative_prompt], ["seed", image.seed], ["steps", p.steps],
    ["sampler", p.sampler], ["schedule", p.schedule], ["guidance", p.guidance], ["model", model]];
  if (heard && heard !== p.prompt) rows.splice(1, 0, ["heard as", heard]);
  if (p.guidance_rescale !== undefined) rows.push(["rescale", p.guidance_rescale]);
  if (p.guidance_interval !== undefined) rows.push(["interval σ", p.guidance_interval.join(" – ")]);
  if (p.deep_cache !== undefined) rows.push(["deep cache", p.deep_cache]);
  if (p.strength !== undefined) rows.push(["strength", p.strength]);
  if (p.inpaint) rows.push(["inpainted", "yes"]);
  for (const c of p.controls || []) rows.push(["control", `${c.type} × ${c.scale}, steps ${c.window.join(" – ")}`]);
  for (const [key, value] of rows) {
    if (value === null || value === undefined || value === "") continue;
    list.append(Object.assign(document.createElement("dt"), { textContent: key }));
    list.append(Object.assign(document.createElement("dd"), { textContent: String(value) }));
  }
  const actions = document.createElement("div");
  actions.className = "actions";
  const link = Object.assign(document.createElement("a"), { href: image.audio || image.image, textContent: "download" });
  link.download = `noisecraft-${image.seed}.${image.audio ? "wav" : "png"}`;
  if (image.audio) {  // a sound: play it; its picture is a drawing of it, not a start image
    const player = Object.assign(document.createElement("audio"), { controls: true, src: image.audio });
    actions.append(link);
    card.append(img, player, list, actions);
    return card;
  }
  const reuse = Object.assign(document.createElement("button"), { type: "button", textContent: "use as start" });
  reuse.addEventListener("click", () => setInitImage(image.image));
  actions.append(link, reuse);
  card.append(img, list, actions);
  return card;
}

// -- image-to-image and the mask brush ------------------------------------------------------------

function showMode() {
  const m = mode();
  $("init-panel").hidden = m === "txt2img";
  $("mask-tools").hidden = m !== "inpaint";
  $("mask-canvas").style.pointerEvents = m === "inpaint" ? "auto" : "none";
  $("strength-label").hidden = m !== "img2img";
}

function setInitImage(dataURL) {
  state.initImage = dataURL;
  const img = new Image();
  img.onload = () => {
    const canvas = $("init-canvas");
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  };
  img.src = dataURL;
  $("init-hint").textContent = "start image set";
  if (mode() === "txt2img") document.querySelector("input[value=img2img]").click();
}

function readFile(event) {
  const file = event.target.files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => setInitImage(reader.result);
  reader.readAsDataURL(file);
}

// The visible mask is red strokes over the image; the mask sent is those strokes in white on black.
const brush = { down: false, last: null };

function paint(event) {
  if (!brush.down) return;
  const canvas = $("mask-canvas");
  const rect = canvas.getBoundingClientRect();
  const x = ((event.clientX - rect.left) * canvas.width) / rect.width;
  const y = ((event.clientY - rect.top) * canvas.height) / rect.height;
  const ctx = canvas.getContext("2d");
  ctx.strokeStyle = ctx.fillStyle = "rgba(255, 40, 40, 0.6)";
  ctx.lineWidth = Number($("brush").value);
  ctx.lineCap = "round";
  ctx.beginPath();
  const from = brush.last || { x, y };
  ctx.moveTo(from.x, from.y);
  ctx.lineTo(x, y);
  ctx.stroke();
  brush.last = { x, y };
}

function maskDataURL() {
  const painted = $("mask-canvas");
  const out = document.createElement("canvas");
  out.width = painted.width;
  out.height = painted.height;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, out.width, out.height);
  const strokes = painted.getContext("2d").getImageData(0, 0, out.width, out.height);
  const mask = ctx.getImageData(0, 0, out.width, out.height);
  for (let i = 3; i < strokes.data.length; i += 4) {
    if (strokes.data[i] > 0) mask.data[i - 3] = mask.data[i - 2] = mask.data[i - 1] = 255;
  }
  ctx.putImageData(mask, 0, 0);
  return out.toDataURL("image/png");
}

function clearMask() {
  const canvas = $("mask-canvas");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
}

// -- wiring ---------------------------------------------------------------------------------------

function init() {
  $("form").addEventListener("submit", generate);
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("model").addEventListener("change", applyModelDefaults);
  $("init-file").addEventListener("change", readFile);
  $("strength").addEventListener("input", () => ($("strength-value").textContent = $("strength").value));
  $("clear-mask").addEventListener("click", clearMask);
  for (const radio of document.querySelectorAll("input[name=mode]")) radio.addEventListener("change", showMode);
  const mask = $("mask-canvas");
  mask.addEventListener("pointerdown", (e) => { brush.down = true; brush.last = null; mask.setPointerCapture(e.pointerId); paint(e); });
  mask.addEventListener("pointermove", paint);
  for (const name of ["pointerup", "pointercancel"]) mask.addEventListener(name, () => { brush.down = false; brush.last = null; });
  showMode();
  initControl();
  loadChoices().catch((err) => setStatus(`could not load models: ${err.message}`, true));
}

init();
