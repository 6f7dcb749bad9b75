// noisecraft web page: the control map (ControlNet) editor. A map is a file the user chooses or a drawing
// on the canvas; the request carries it as one item of the native API's "controls" list.
"use strict";

const controlEditor = {
  file: null,      // the chosen file as a data URL, sent as it is until the user draws over it
  undo: [],        // canvas snapshots before each stroke (the last few)
  down: false,
  last: null,
  colour: "#ffffff",
};
const CONTROL_COLOURS = { white: "#ffffff", black: "#000000", red: "#ff0000", green: "#00ff00",
  blue: "#0000ff", yellow: "#ffff00" };
const CONTROL_UNDO_DEPTH = 20;

function controlById(id) {
  return document.getElementById(id);
}

// Shown only for a model with a control branch of its own; the canvas is the model's size (at least 256 px).
function showControl(model) {
  const panel = controlById("control-panel");
  const available = Boolean(model && model.control);
  panel.hidden = !available;
  if (!available) return;
  const canvas = controlById("control-canvas");
  const side = Math.min(1024, Math.max(256, model.image_size));
  if (canvas.width !== side) {
    canvas.width = canvas.height = side;
    clearControl();
  }
}

// The page a map starts from: white for a scribble (dark strokes on a light page), black otherwise.
function controlBackground() {
  return ["scribble", "canny"].includes(controlById("control-type").value) ? "#ffffff" : "#000000";
}

function clearControl() {
  const canvas = controlById("control-canvas");
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = controlBackground();
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  controlEditor.file = null;
  controlEditor.undo = [];
  controlById("control-undo").disabled = true;
}

function readControlFile(event) {
  const file = event.target.files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    const img = new Image();
    img.onload = () => {
      const canvas = controlById("control-canvas");
      const ctx = canvas.getContext("2d");
      ctx.imageSmoothingEnabled = false;
      ctx.fillStyle = "#000000";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
      controlEditor.file = reader.result;
      controlEditor.undo = [];
      controlById("control-undo").disabled = true;
      controlById("control-on").checked = true;
    };
    img.src = reader.result;
  };
  reader.readAsDataURL(file);
}

function controlPoint(event) {
  const canvas = controlById("control-canvas");
  const rect = canvas.getBoundingClientRect();
  return {
    x: ((event.clientX - rect.left) * canvas.width) / rect.width,
    y: ((event.clientY - rect.top) * canvas.height) / rect.height,
  };
}

function startStroke(event) {
  const canvas = controlById("control-canvas");
  const ctx = canvas.getContext("2d");
  controlEditor.undo.push(ctx.getImageData(0, 0, canvas.width, canvas.height));
  if (controlEditor.undo.length > CONTROL_UNDO_DEPTH) controlEditor.undo.shift();
  controlById("control-undo").disabled = false;
  controlEditor.file = null;  // the drawing is sent from now on, file and strokes together
  controlEditor.down = true;
  controlEditor.last = null;
  controlById("control-on").checked = true;
  canvas.setPointerCapture(event.pointerId);
  drawStroke(event);
}

// An opaque stroke in the chosen colour, its width in screen pixels whatever the canvas's resolution.
function drawStroke(event) {
  if (!controlEditor.down) return;
  const ctx = controlById("control-canvas").getContext("2d");
  const scale = controlById("control-canvas").width / controlById("control-canvas").getBoundingClientRect().width;
  const point = controlPoint(event);
  const from = controlEditor.last || point;
  ctx.strokeStyle = controlEditor.colour;
  ctx.lineWidth = Number(controlById("control-size").value) * scale;
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(from.x, from.y);
  ctx.lineTo(point.x, point.y);
  ctx.stroke();
  controlEditor.last = point;
}

function endStroke() {
  controlEditor.down = false;
  controlEditor.last = null;
}

function undoControl() {
  const snapshot = controlEditor.undo.pop();
  if (snapshot) controlById("control-canvas").getContext("2d").putImageData(snapshot, 0, 0);
  controlById("control-undo").disabled = controlEditor.undo.length === 0;
}

// The request's "controls" field: [] unless the panel is shown and switched on.
function controlItems() {
  if (controlById("control-panel").hidden || !controlById("control-on").checked) return [];
  const number = (id) => Number(controlById(id).value);
  const image = controlEditor.file || controlById("control-canvas").toDataURL("image/png");
  return [{
    image,
    type: controlById("control-type").value,
    scale: number("control-scale"),
    window: [number("control-start"), number("control-end")],
  }];
}

function colourButtons() {
  const group = controlById("control-colours");
  for (const [name, colour] of Object.entries(CONTROL_COLOURS)) {
    const button = Object.assign(document.createElement("button"), { type: "button", title: name });
    button.className = "swatch";
    button.style.background = colour;
    button.dataset.colour = colour;
    button.setAttribute("role", "radio");
    button.setAttribute("aria-label", name);
    button.setAttribute("aria-checked", String(colour === controlEditor.colour));
    button.addEventListener("click", () => {
      controlEditor.colour = colour;
      for (const b of group.children) b.setAttribute("aria-checked", String(b === button));
    });
    group.append(button);
  }
}

function initControl() {
  colourButtons();
  const canvas = controlById("control-canvas");
  canvas.addEventListener("pointerdown", startStroke);
  canvas.addEventListener("pointermove", drawStroke);
  for (const name of ["pointerup", "pointercancel"]) canvas.addEventListener(name, endStroke);
  controlById("control-file").addEventListener("change", readControlFile);
  controlById("control-clear").addEventListener("click", clearControl);
  controlById("control-undo").addEventListener("click", undoControl);
  controlById("control-type").addEventListener("change", () => {
    if (!controlEditor.file && controlEditor.undo.length === 0) clearControl();  // still blank: new page
  });
  clearControl();
}
