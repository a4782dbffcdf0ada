// The BuboGPT page: picture and/or sound in, the answer streamed from /v1/chat/completions (the
// OpenAI-compatible API of the same server), each grounded entity's mask and box drawn over the
// picture as it arrives, colour-matched to its phrase in the answer. No build step, no CDN.
"use strict";

const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#469990", "#9a6324"];
const $ = (id) => document.getElementById(id);

const state = {
  model: null,
  image: null,        // {dataUrl, bitmap, width, height}
  audio: null,        // {dataUrl, format}
  history: [],        // OpenAI messages of this conversation
  entities: [],       // of the answer on the canvas: {phrase, start, end, label, score, box, mask, color, pixels}
  timings: null,      // the server's timings of the last answer (the final chunk's bubo.timings)
  highlighted: null,
  scale: 1,
};
window.bubo = { state };  // for tests and the curious (redraw, setImage added below)

// -- COCO RLE ------------------------------------------------------------------------------------

// pycocotools' rleFrString: the counts string -> run lengths
function rleCounts(text) {
  const counts = [];
  let p = 0;
  while (p < text.length) {
    let x = 0, k = 0, more = true, c;
    while (more) {
      c = text.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p++; k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

// mask in column-major order (COCO) -> Uint8Array row-major [h * w]
function rleDecode(rle) {
  const [h, w] = rle.size;
  const mask = new Uint8Array(h * w);
  const counts = typeof rle.counts === "string" ? rleCounts(rle.counts) : rle.counts;
  let i = 0, value = 0;
  for (const run of counts) {
    for (let j = 0; j < run; j++, i++) {
      if (value) mask[(i % h) * w + Math.floor(i / h)] = 1;
    }
    value ^= 1;
  }
  return mask;
}

// -- the canvas ------------------------------------------------------------------------------------

function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

function draw() {
  const canvas = $("canvas"), ctx = canvas.getContext("2d");
  if (!state.image) {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    $("drop-hint").hidden = false;
    return;
  }
  $("drop-hint").hidden = true;
  const { bitmap, width, height } = state.image;
  state.scale = Math.min(1, 480 / width);
  canvas.width = Math.round(width * state.scale);
  canvas.height = Math.round(height * state.scale);
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  if (!state.entities.length) return;
  // masks at the picture's own size, then scaled onto the canvas
  const layer = new OffscreenCanvas(width, height), lctx = layer.getContext("2d");
  const pixels = lctx.createImageData(width, height);
  for (const entity of state.entities) {
    if (!entity.pixels) continue;
    const [r, g, b] = hexToRgb(entity.color);
    const alpha = state.highlighted === null ? 130 : (state.highlighted === entity ? 180 : 35);
    for (let i = 0; i < entity.pixels.length; i++) {
      if (entity.pixels[i]) {
        pixels.data.set([r, g, b, alpha], i * 4);
      }
    }
  }
  lctx.putImageData(pixels, 0, 0);
  ctx.drawImage(layer, 0, 0, canvas.width, canvas.height);
  ctx.font = "12px system-ui, sans-serif";
  for (const entity of state.entities) {
    const [x0, y0, x1, y1] = entity.box.map((v) => v * state.scale);
    ctx.strokeStyle = entity.color;
    ctx.lineWidth = state.highlighted === entity ? 3 : 2;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    const label = `${entity.label} ${entity.score.toFixed(2)}`;
    ctx.fillStyle = entity.color;
    ctx.fillRect(x0, Math.max(0, y0 - 16), ctx.measureText(label).width + 8, 16);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, x0 + 4, Math.max(12, y0 - 4));
  }
}

function addEntity(raw, answerNode) {
  if (state.entities.some((e) => e.index === raw.index && e.start === raw.start)) return;  // sent once
  // written: how much of the answer had arrived with it (masks are drawn while the answer is written)
  const entity = { ...raw, color: COLORS[state.entities.length % COLORS.length], written: (answerNode.dataset.text || "").length };
  entity.pixels = raw.mask ? rleDecode(raw.mask) : null;
  state.entities.push(entity);
  markPhrases(answerNode);
  draw();
}

// the answer text with each grounded phrase coloured like its mask
function markPhrases(node) {
  const text = node.dataset.text || "";
  const spans = state.entities.filter((e) => e.end > e.start && e.end <= text.length).sort((a, b) => a.start - b.start);
  node.textContent = "";
  let at = 0;
  for (const entity of spans) {
    if (entity.start < at) continue;
    node.append(text.slice(at, entity.start));
    const span = document.createElement("span");
    span.className = "phrase";
    span.textContent = text.slice(entity.start, entity.end);
    span.style.background = entity.color + "33";
    span.style.color = entity.color;
    span.title = `${entity.label} (${entity.score.toFixed(2)})`;
    span.addEventListener("mouseenter", () => { state.highlighted = entity; draw(); });
    span.addEventListener("mouseleave", () => { state.highlighted = null; draw(); });
    node.append(span);
    at = entity.end;
  }
  node.append(text.slice(at));
}

// -- inputs ----------------------------------------------------------------------------------------

function readAsDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

async function setImage(blob) {
  const bitmap = await createImageBitmap(blob);
  resetConversation();
  state.image = { dataUrl: await readAsDataUrl(blob), bitmap, width: bitmap.width, height: bitmap.height };
  draw();
}

const AUDIO_FORMATS = { "audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav", "audio/mpeg": "mp3", "audio/mp3": "mp3",
                        "audio/flac": "flac", "audio/x-flac": "flac", "audio/ogg": "ogg" };

async function setAudio(blob, name = "") {
  const extension = (name.split(".").pop() || "").toLowerCase();
  const format = AUDIO_FORMATS[blob.type] || (["wav", "mp3", "flac", "ogg"].includes(extension) ? extension : null);
  if (!format) {
    showStatus(`${name || "this file"}: send WAV, MP3, FLAC or OGG audio`, true);
    return;
  }
  resetConversation();
  state.audio = { dataUrl: await readAsDataUrl(blob), format };
  const player = $("player");
  player.src = URL.createObjectURL(blob);
  player.hidden = false;
}

async function takeFile(file) {
  if (file.type.startsWith("image/")) await setImage(file);
  else await setAudio(file, file.name);
}

function resetConversation() {
  state.history = [];
  state.entities = [];
  state.highlighted = null;
  $("conversation").textContent = "";
  showStatus("");
}

// -- the API ---------------------------------------------------------------------------------------

function headers() {
  const key = $("api-key").value.trim();
  localStorage.setItem("bubo-api-key", key);
  return { "Content-Type": "application/json", ...(key ? { Authorization: `Bearer ${key}` } : {}) };
}

function showStatus(text, bad = false) {
  $("status").textContent = text;
  $("status").className = bad ? "error" : "";
}

function explain(status, error) {
  const message = (error && error.message) || `HTTP ${status}`;
  if (status === 503) return `A part of the server is down or restarting: ${message}. Try again in a moment.`;
  if (status === 401) return `${message} (enter the API key in Settings)`;
  if (status === 429) return `The server is busy: ${message}`;
  return message;
}

function userMessage(question) {
  const content = [{ type: "text", text: question }];
  if (!state.history.length) {  // the picture and the sound belong to the conversation's first question
    if (state.image) content.push({ type: "image_url", image_url: { url: state.image.dataUrl } });
    if (state.audio) content.push({ type: "input_audio", input_audio: { data: state.audio.dataUrl.split(",")[1], format: state.audio.format } });
  }
  return { role: "user", content };
}

function addTurn(who, text, cls = "") {
  const turn = document.createElement("div");
  turn.className = `turn ${cls}`;
  const label = document.createElement("span");
  label.className = "who";
  label.textContent = who;
  const body = document.createElement("span");
  body.className = "body";
  body.dataset.text = text;
  body.textContent = text;
  turn.append(label, body);
  $("conversation").append(turn);
  $("conversation").scrollTop = $("conversation").scrollHeight;
  return body;
}

async function modelId() {
  if (!state.model) {
    const response = await fetch("/v1/models", { headers: headers() });
    if (!response.ok) throw new Error(explain(response.status, (await response.json().catch(() => ({}))).error));
    state.model = (await response.json()).data[0].id;
  }
  return state.model;
}

async function ask(question) {
  const message = userMessage(question);
  const messages = [...state.history, message];
  addTurn("you", question);
  const answer = addTurn("BuboGPT", "");
  state.entities = [];
  state.timings = null;
  state.highlighted = null;
  draw();
  $("send").disabled = true;
  showStatus("thinking…");
  try {
    const body = { model: await modelId(), messages, stream: true, temperature: 0,
                   max_tokens: Number($("max-tokens").value) || 96, bubo: { ground: $("ground").checked && !!state.image } };
    const response = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (!response.ok) {
      const error = (await response.json().catch(() => ({}))).error;
      throw new Error(explain(response.status, error));
    }
    await readStream(response, answer);
    state.history = [...messages, { role: "assistant", content: answer.dataset.text }];
    showStatus(state.entities.length ? `${state.entities.length} object(s) grounded; hover a coloured phrase to see its mask`
                                     : (state.image && $("ground").checked ? "no object of the answer was grounded" : ""));
  } catch (error) {
    answer.parentElement.classList.add("error");
    answer.textContent = error.message;
    showStatus("", false);
  } finally {
    $("send").disabled = false;
  }
}

async function readStream(response, answer) {
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(explain(503, chunk.error));
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) {
          answer.dataset.text += delta.content;
          markPhrases(answer);
        }
        if (chunk.bubo && chunk.bubo.entity) addEntity(chunk.bubo.entity, answer);
        if (chunk.bubo && chunk.bubo.entities) chunk.bubo.entities.forEach((e) => addEntity(e, answer));
        if (chunk.bubo && chunk.bubo.timings) state.timings = chunk.bubo.timings;
      }
    }
  }
}

// -- wiring ------------------------------------------------------------------------------------------

async function loadSamples() {
  const samples = await (await fetch("/static/samples/samples.json")).json();
  for (const sample of samples.images) {
    const img = document.createElement("img");
    img.src = `/static/samples/${sample.file}`;
    img.alt = img.title = sample.title;
    img.dataset.sample = sample.file;
    img.addEventListener("click", async () => setImage(await (await fetch(img.src)).blob()));
    $("sample-images").append(img);
  }
  for (const sample of samples.sounds) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `♪ ${sample.title}`;
    button.dataset.sample = sample.file;
    button.addEventListener("click", async () => setAudio(await (await fetch(`/static/samples/${sample.file}`)).blob(), sample.file));
    $("sample-sounds").append(button);
  }
}

async function init() {
  $("api-key").value = localStorage.getItem("bubo-api-key") || "";
  $("image-file").addEventListener("change", (e) => e.target.files[0] && takeFile(e.target.files[0]));
  $("audio-file").addEventListener("change", (e) => e.target.files[0] && takeFile(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    for (const file of e.dataTransfer.files) await takeFile(file);
  });
  $("clear").addEventListener("click", () => {
    resetConversation();
    state.image = state.audio = null;
    $("player").hidden = true;
    draw();
  });
  $("ask").addEventListener("submit", (e) => {
    e.preventDefault();
    const question = $("question").value.trim() || "What do you see and hear?";
    $("question").value = "";
    ask(question);
  });
  await modelId().catch((error) => showStatus(`${error.message}`, true));
  await loadSamples().catch(() => {});
  draw();
}

window.bubo.redraw = draw;
window.bubo.setImage = setImage;
init();
