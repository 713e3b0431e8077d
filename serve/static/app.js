// edgevfm's page: plain JavaScript, no build step, nothing fetched but this server's API.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { dataUrl: null, width: 0, height: 0, imageId: null, points: [], labels: [], box: null,
                history: [], imageSent: false, busy: false };
window.edgevfm = state;  // read by the browser test

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function showError(message) { $("error").textContent = message || ""; }

async function post(path, body) {
  const response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body) });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error((data.error && data.error.message) || response.statusText);
  return data;
}

async function loadModels() {
  const health = await fetch("/health").then((r) => r.json()).catch(() => ({ status: "unreachable" }));
  $("health").textContent = "server: " + health.status;
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) { showError("cannot list the models: " + response.status); return; }
  const models = (await response.json()).data;
  for (const select of document.querySelectorAll("select[data-can]")) {
    const wanted = select.dataset.can.split(" ");
    select.innerHTML = "";
    for (const m of models.filter((m) => m.capabilities.some((c) => wanted.includes(c)))) {
      const option = document.createElement("option");
      option.value = option.textContent = m.id;
      select.appendChild(option);
    }
    select.closest("section").hidden = select.options.length === 0 && select.id !== "sam-model";
  }
  if (health.status === "loading") setTimeout(loadModels, 2000);
}

// -- the image and SAM ----------------------------------------------------------------------------
function clearMask() {
  const mask = $("mask");
  mask.getContext("2d").clearRect(0, 0, mask.width, mask.height);
}

$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    const img = new Image();
    img.onload = async () => {
      for (const canvas of [$("image"), $("mask")]) { canvas.width = img.naturalWidth; canvas.height = img.naturalHeight; }
      $("image").getContext("2d").drawImage(img, 0, 0);
      Object.assign(state, { dataUrl: reader.result, width: img.naturalWidth, height: img.naturalHeight,
                             imageId: null, points: [], labels: [], box: null, imageSent: false });
      clearMask();
      await embed();
    };
    img.src = reader.result;
  };
  reader.readAsDataURL(file);
});

async function embed() {
  const model = $("sam-model").value;
  if (!model || !state.dataUrl) return;
  $("sam-status").textContent = "encoding the image…";
  try {
    const found = await post("/v1/sam/embed", { model, image: state.dataUrl });
    state.imageId = found.image_id;
    $("sam-status").textContent = "ready: click on the image";
    $("stage").dataset.ready = "1";
  } catch (e) { showError(e.message); $("sam-status").textContent = ""; }
}

function imagePoint(event) {
  const r = $("image").getBoundingClientRect();
  return [(event.clientX - r.left) * state.width / r.width, (event.clientY - r.top) * state.height / r.height];
}

let pressed = null;
$("image").addEventListener("mousedown", (e) => { pressed = { at: imagePoint(e), x: e.clientX, y: e.clientY }; });
$("image").addEventListener("mouseup", (e) => {
  if (!pressed || !state.imageId) return;
  const end = imagePoint(e);
  if (Math.hypot(e.clientX - pressed.x, e.clientY - pressed.y) > 5) {
    const [a, b] = [pressed.at, end];
    state.box = [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
  } else {
    state.points.push(pressed.at);
    state.labels.push(e.shiftKey ? 0 : 1);
  }
  pressed = null;
  segment();
});

$("sam-clear").addEventListener("click", () => { Object.assign(state, { points: [], labels: [], box: null }); clearMask(); });
$("sam-model").addEventListener("change", embed);

function decodeRle(rle) {  // COCO RLE, column-major, zeros first -> row-major 0/1
  const [h, w] = rle.size, out = new Uint8Array(h * w);
  let at = 0, value = 0;
  for (const count of rle.counts) {
    if (value) for (let i = at; i < at + count; i++) out[(i % h) * w + Math.floor(i / h)] = 1;
    at += count; value ^= 1;
  }
  return out;
}

async function segment() {
  const body = { model: $("sam-model").value, image_id: state.imageId, multimask: true };
  if (state.points.length) { body.points = state.points; body.labels = state.labels; }
  if (state.box) body.box = state.box;
  const started = performance.now();
  try {
    const found = await post("/v1/sam/segment", body);
    const best = found.masks.reduce((a, b) => (b.score > a.score ? b : a));
    drawMask(decodeRle(best.mask));
    state.lastScore = best.score;
    $("sam-status").textContent = `mask in ${(performance.now() - started).toFixed(0)} ms, score ${best.score.toFixed(3)}`;
    $("stage").dataset.masks = String((Number($("stage").dataset.masks) || 0) + 1);
  } catch (e) { showError(e.message); }
}

function drawMask(bits) {
  const mask = $("mask"), context = mask.getContext("2d");
  const pixels = context.createImageData(mask.width, mask.height);
  for (let i = 0; i < bits.length; i++) {
    if (bits[i]) { pixels.data.set([30, 144, 255, 140], i * 4); }
  }
  context.putImageData(pixels, 0, 0);
}

// -- chat ----------------------------------------------------------------------------------------
function addTurn(role, text) {
  const div = document.createElement("div");
  div.className = "turn " + role;
  div.textContent = text;
  $("chat-log").appendChild(div);
  return div;
}

$("chat-new").addEventListener("click", () => { state.history = []; state.imageSent = false; $("chat-log").innerHTML = ""; });

$("chat-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("chat-input").value.trim();
  if (!text || state.busy) return;
  $("chat-input").value = "";
  const content = [];
  if (state.dataUrl && !state.imageSent) content.push({ type: "image_url", image_url: { url: state.dataUrl } });
  content.push({ type: "text", text });
  const messages = state.history.concat([{ role: "user", content }]);
  addTurn("user", text);
  const answer = addTurn("assistant", "");
  answer.dataset.pieces = "0";
  state.busy = true;
  try {
    const response = await fetch("/v1/chat/completions", { method: "POST", headers: headers(),
      body: JSON.stringify({ model: $("chat-model").value, messages, stream: true }) });
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      throw new Error((data.error && data.error.message) || response.statusText);
    }
    const reader = response.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const event = JSON.parse(line.slice(6));
        if (event.error) throw new Error(event.error.message);
        const piece = event.choices.length ? event.choices[0].delta.content : "";
        if (piece) {
          answer.textContent += piece;
          answer.dataset.pieces = String(Number(answer.dataset.pieces) + 1);
        }
      }
    }
    state.history = messages.concat([{ role: "assistant", content: answer.textContent }]);
    state.imageSent = state.imageSent || content.length > 1;
    answer.dataset.done = "1";
  } catch (e) { showError(e.message); answer.dataset.done = "error"; }
  state.busy = false;
});

// -- caption and classify ------------------------------------------------------------------------
$("caption-run").addEventListener("click", async () => {
  if (!state.dataUrl) { showError("choose an image first"); return; }
  try {
    $("caption-out").textContent = (await post("/v1/captions", { model: $("caption-model").value, image: state.dataUrl })).caption;
  } catch (e) { showError(e.message); }
});

$("classify-run").addEventListener("click", async () => {
  if (!state.dataUrl) { showError("choose an image first"); return; }
  const labels = $("labels").value.split(",").map((s) => s.trim()).filter(Boolean);
  try {
    const found = await post("/v1/classify", { model: $("classify-model").value, image: state.dataUrl, labels });
    $("classify-out").innerHTML = "";
    for (const { label, probability } of found.labels) {
      const li = document.createElement("li");
      li.textContent = `${label}: ${(100 * probability).toFixed(1)}%`;
      $("classify-out").appendChild(li);
    }
  } catch (e) { showError(e.message); }
});

loadModels();
