// RESAIL studio page: plain JS over the JSON API (see docs/studio.md). No build step.
// Data strings are only ever put into the page with textContent / attributes, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const S = {
  info: null, map: null, labels: null, W: 0, H: 0, tool: "select", cls: null, brush: 8,
  undo: [], redo: [], selected: null, lut: new Map(), names: new Map(), painting: false,
  last: null, before: null, sending: false, pending: false, t0: 0,
};
const UNDO_LIMIT = 50;

// ------------------------------------------------------------------ small helpers
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function status(text, kind = "") {
  const s = $("status");
  s.textContent = text;
  s.className = "status " + kind;
  document.body.classList.toggle("busy", kind === "busy");
}

async function api(method, url, body) {
  const opt = { method, headers: {} };
  if (body instanceof FormData) opt.body = body;
  else if (body !== undefined) { opt.body = JSON.stringify(body); opt.headers["Content-Type"] = "application/json"; }
  const r = await fetch(url, opt);
  const type = r.headers.get("content-type") || "";
  if (!r.ok) {
    let msg = `${r.status} ${r.statusText}`;
    if (type.includes("json")) { try { msg = (await r.json()).error || msg; } catch (e) { /* keep */ } }
    throw new Error(msg);
  }
  if (type.includes("json")) return r.json();
  return r.arrayBuffer();
}

function hexToRgb(h) { return [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)); }

// ------------------------------------------------------------------ PNG encoder (class-id maps)
// The painted map goes back to the server as a single-channel PNG (8-bit, or 16-bit when an id
// exceeds 255) — the same format `resail synthesize --labels` reads, so ids are never colour-managed.
const CRC = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) { let c = n; for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1; t[n] = c >>> 0; }
  return t;
})();
function crc32(bytes) { let c = 0xffffffff; for (let i = 0; i < bytes.length; i++) c = CRC[(c ^ bytes[i]) & 0xff] ^ (c >>> 8); return (c ^ 0xffffffff) >>> 0; }
function chunk(type, data) {
  const out = new Uint8Array(12 + data.length); const dv = new DataView(out.buffer);
  dv.setUint32(0, data.length); for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8); dv.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length))); return out;
}
async function zlib(raw) {
  const s = new Blob([raw]).stream().pipeThrough(new CompressionStream("deflate"));
  return new Uint8Array(await new Response(s).arrayBuffer());
}
async function encodeIndexPNG(ids, w, h) {
  let max = 0; for (let i = 0; i < ids.length; i++) if (ids[i] > max) max = ids[i];
  const bpp = max > 255 ? 2 : 1; const raw = new Uint8Array(h * (1 + w * bpp));
  for (let y = 0, o = 0; y < h; y++) {
    raw[o++] = 0;
    for (let x = 0; x < w; x++) { const v = ids[y * w + x]; if (bpp === 2) raw[o++] = v >> 8; raw[o++] = v & 255; }
  }
  const ihdr = new Uint8Array(13); const dv = new DataView(ihdr.buffer);
  dv.setUint32(0, w); dv.setUint32(4, h); ihdr[8] = bpp * 8; ihdr[9] = 0;
  const sig = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
  return new Blob([sig, chunk("IHDR", ihdr), chunk("IDAT", await zlib(raw)), chunk("IEND", new Uint8Array(0))],
                  { type: "image/png" });
}

// ------------------------------------------------------------------ setup
async function init() {
  try {
    S.info = await api("GET", "/api/info");
  } catch (e) { status("cannot reach the studio server: " + e.message, "error"); return; }
  const I = S.info;
  $("runinfo").textContent = `${I.run} · ${I.dataset} (${I.classes.length} classes) · generator ${I.generator_size[0]}×${I.generator_size[1]} · top-${I.k}`;
  for (const c of I.classes) { S.lut.set(c.id, hexToRgb(c.color)); S.names.set(c.id, c.name); }
  S.lut.set(I.ignore.id, hexToRgb(I.ignore.color)); S.names.set(I.ignore.id, "void");
  buildLegend(); buildExamples(); buildReference();
  $("global-rank").max = Math.max(0, I.k - 1);
  bindControls();
  setTool("select");
  selectClass(I.classes.length ? I.classes[0].id : I.ignore.id);
  status("ready");
}

function buildLegend() {
  const ul = $("legend"); ul.replaceChildren();
  const entries = [...S.info.classes, { id: S.info.ignore.id, name: "void (ignored)", thing: false, color: S.info.ignore.color }];
  for (const c of entries) {
    const b = el("button", { "data-class": c.id, title: `class id ${c.id}`, onclick: () => selectClass(c.id) },
      el("span", { class: "swatch", style: `background:${c.color}` }), el("span", { class: "name", text: c.name }));
    if (c.thing) b.append(el("span", { class: "tag", text: "thing" }));
    ul.append(el("li", {}, b));
  }
}

function buildExamples() {
  const box = $("examples"); box.replaceChildren();
  for (const ex of S.info.examples) {
    box.append(el("button", { class: "example", "data-image": ex.image_id, title: `${ex.split}/${ex.image_id} (${ex.width}×${ex.height})`,
      onclick: () => openExample(ex.image_id) }, el("img", { src: ex.thumbnail_url, alt: ex.image_id, loading: "lazy" })));
  }
  $("examples-note").textContent = S.info.dataset_note ||
    (S.info.examples.length ? `${S.info.examples.length} validation label maps` : "no validation label maps in this cache");
}

function buildReference() {
  const sel = $("reference");
  for (const id of S.info.references) sel.append(el("option", { value: id, text: id }));
}

function bindControls() {
  document.querySelectorAll(".tool").forEach((b) => b.addEventListener("click", () => setTool(b.dataset.tool)));
  const bs = $("brush-size");
  bs.addEventListener("input", () => { S.brush = +bs.value; $("brush-size-out").textContent = bs.value; });
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  const gr = $("global-rank");
  gr.addEventListener("input", () => { $("global-rank-out").textContent = gr.value; });
  gr.addEventListener("change", () => edit("PUT", "ranks", { rank: +gr.value }));
  $("reference").addEventListener("change", (e) => {
    const v = e.target.value;
    edit("PUT", "reference", { image_id: v || null });
  });
  $("upload-form").addEventListener("submit", (e) => { e.preventDefault(); upload(); });
  bindVariety();
  for (const id of ["stage-labels", "stage-guidance", "stage-image"]) {
    const st = $(id);
    st.addEventListener("pointerdown", (e) => pointerDown(e, st));
    st.addEventListener("pointermove", (e) => pointerMove(e, st));
  }
  window.addEventListener("pointerup", pointerUp);
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
    if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z") { e.preventDefault(); e.shiftKey ? redo() : undo(); }
    else if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "y") { e.preventDefault(); redo(); }
    else if (e.key === "s") setTool("select");
    else if (e.key === "b") setTool("brush");
    else if (e.key === "f") setTool("fill");
    else if (e.key === "[" || e.key === "]") {
      bs.value = Math.max(1, Math.min(60, S.brush + (e.key === "]" ? 2 : -2))); bs.dispatchEvent(new Event("input"));
    }
  });
}

function setTool(t) {
  S.tool = t;
  document.querySelectorAll(".tool").forEach((b) => b.classList.toggle("active", b.dataset.tool === t));
  document.body.classList.toggle("tool-select", t === "select");
}

function selectClass(id) {
  S.cls = id;
  document.querySelectorAll(".legend button").forEach((b) => b.classList.toggle("active", +b.dataset.class === id));
  $("current-class").textContent = "· painting " + (S.names.get(id) || id);
}

// ------------------------------------------------------------------ opening maps
async function openExample(imageId) {
  await withStatus(`opening ${imageId}…`, async () => {
    const st = await api("POST", `/api/examples/${encodeURIComponent(imageId)}`);
    document.querySelectorAll(".example").forEach((b) => b.classList.toggle("active", b.dataset.image === imageId));
    await loaded(st, true);
  });
}

async function upload() {
  const lf = $("upload-labels").files[0];
  if (!lf) { status("choose a label map PNG first", "error"); return; }
  const fd = new FormData(); fd.append("labels", lf);
  const inf = $("upload-instances").files[0]; if (inf) fd.append("instances", inf);
  await withStatus("uploading…", async () => {
    const st = await api("POST", "/api/maps", fd);
    document.querySelectorAll(".example").forEach((b) => b.classList.remove("active"));
    await loaded(st, true);
  });
}

async function loaded(st, fresh) {
  S.map = st;
  const buf = await api("GET", `/api/maps/${st.map_id}/labels.raw`);
  S.labels = new Uint16Array(buf); S.W = st.width; S.H = st.height;
  if (fresh) { S.undo = []; S.redo = []; }
  for (const id of ["labels-canvas", "overlay-labels", "overlay-guidance", "overlay-image"]) {
    $(id).width = S.W; $(id).height = S.H;
  }
  $("empty").hidden = true; $("panels").hidden = false; $("history-card").hidden = false; $("editbar").hidden = false;
  S.selected = null; $("candidates-card").hidden = true;
  drawLabels(); render(st);
}

async function withStatus(text, fn) {
  status(text, "busy");
  try { await fn(); } catch (e) { status(e.message, "error"); }
}

// ------------------------------------------------------------------ drawing
function drawLabels() {
  const cv = $("labels-canvas"); const ctx = cv.getContext("2d");
  const img = ctx.createImageData(S.W, S.H); const d = img.data;
  for (let i = 0; i < S.labels.length; i++) {
    const c = S.lut.get(S.labels[i]) || [255, 255, 255];
    d[4 * i] = c[0]; d[4 * i + 1] = c[1]; d[4 * i + 2] = c[2]; d[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  const present = new Set(S.labels);
  document.querySelectorAll(".legend button").forEach((b) => b.classList.toggle("present", present.has(+b.dataset.class)));
}

function render(st) {
  S.map = st;
  const t0 = performance.now();
  const img = $("synth-img");
  img.onload = () => {
    const tm = st.timings || {};
    const parts = [`v${st.version}`];
    if (tm.total_ms !== undefined) parts.push(`server ${tm.total_ms.toFixed(0)} ms`);
    if (S.t0) parts.push(`round trip ${(performance.now() - S.t0).toFixed(0)} ms`);
    if (tm.segments_retrieved !== undefined) parts.push(`${tm.segments_retrieved} retrieved / ${tm.segments_reused} reused`);
    status(parts.join(" · "));
    document.body.dataset.version = st.version;
    S.t0 = 0;
  };
  img.src = st.image_url;
  $("guidance-img").src = st.guidance_url;
  $("labels-sub").textContent = `${st.width}×${st.height} · ${st.segments.length} segments`;
  $("global-rank").value = st.rank; $("global-rank-out").textContent = st.rank;
  $("reference").value = st.reference || "";
  const rt = $("reference-thumb");
  if (st.reference) { rt.src = `/api/images/${encodeURIComponent(st.reference)}/thumbnail.png`; rt.hidden = false; }
  else rt.hidden = true;
  const base = `/api/maps/${st.map_id}`;
  $("dl-image").href = st.image_url; $("dl-guidance").href = st.guidance_url;
  $("dl-labels").href = st.labels_url; $("dl-labels-color").href = `${base}/labels.png?color=true&v=${st.version}`;
  renderHistory(st);
  if (S.selected !== null && S.selected < st.segments.length) showCandidates(S.selected);
  else { S.selected = null; $("candidates-card").hidden = true; clearOverlays(); }
  renderVariety(st);
  void t0;
}

function renderHistory(st) {
  const box = $("history"); box.replaceChildren();
  for (const h of st.history) {
    box.append(el("button", { class: "snap" + (h.index === st.current ? " current" : ""), title: h.what,
      onclick: () => edit("POST", `history/${h.index}/restore`, undefined, true) },
      el("img", { src: `${h.thumbnail_url}?m=${st.map_id}`, alt: h.what }), el("span", { text: `${h.index + 1}. ${h.what}` })));
  }
  box.scrollLeft = box.scrollWidth;
}

function clearOverlays() {
  for (const id of ["overlay-labels", "overlay-guidance", "overlay-image"]) {
    const c = $(id); c.getContext("2d").clearRect(0, 0, c.width, c.height);
  }
}

async function highlight(index) {
  const seg = S.map.segments[index]; if (!seg) return;
  const mask = new Image();
  mask.src = `/api/maps/${S.map.map_id}/segments/${index}/mask.png?v=${S.map.version}`;
  await mask.decode().catch(() => null);
  const [y0, x0, y1, x1] = seg.box;
  for (const id of ["overlay-labels", "overlay-guidance", "overlay-image"]) {
    const c = $(id); const ctx = c.getContext("2d");
    ctx.globalCompositeOperation = "source-over";
    ctx.clearRect(0, 0, c.width, c.height);
    ctx.fillStyle = "rgba(0,0,0,0.45)"; ctx.fillRect(0, 0, c.width, c.height);
    ctx.globalCompositeOperation = "destination-out";
    ctx.drawImage(mask, x0, y0);
    ctx.globalCompositeOperation = "source-over";
    ctx.strokeStyle = "#ffd54a"; ctx.lineWidth = Math.max(1, Math.round(S.W / 300));
    ctx.strokeRect(x0 + 0.5, y0 + 0.5, x1 - x0 - 1, y1 - y0 - 1);
  }
}

// ------------------------------------------------------------------ candidates (local edit)
async function showCandidates(index) {
  S.selected = index;
  const seg = S.map.segments[index];
  $("candidates-card").hidden = false;
  $("candidates-title").textContent = `Segment ${index} · ${seg.class_name} · ${seg.n_candidates} candidates` +
    (seg.rank === null ? " · black (no candidate at this rank)" : ` · using rank ${seg.rank}`);
  highlight(index);
  let cands;
  try { cands = await api("GET", `/api/maps/${S.map.map_id}/segments/${index}/candidates`); }
  catch (e) { status(e.message, "error"); return; }
  const grid = $("candidates"); grid.replaceChildren();
  if (!cands.length) grid.append(el("p", { class: "hint", text: "No admissible candidate in the database: this segment stays black." }));
  for (const c of cands) {
    const thumbs = el("div", { class: "thumbs" }, el("img", { class: "crop", src: c.thumbnail_url, alt: `segment ${c.segment_id}`, title: "retrieved segment" }));
    if (c.source_url) thumbs.append(el("img", { class: "src", src: c.source_url, alt: c.image_id, title: `source image ${c.image_id}` }));
    const card = el("button", { class: "cand" + (c.chosen ? " chosen" : ""), "data-rank": c.rank,
      title: `rank ${c.rank}: D = ${c.score} (shape ${c.shape_term}, scale ${c.scale_term}) from ${c.image_id}`,
      onclick: () => edit("PUT", `segments/${index}`, { rank: c.rank }) },
      thumbs,
      el("div", { class: "meta" }, el("b", { text: `#${c.rank}` }), el("span", { text: `D ${c.score.toFixed(3)}` })),
      el("div", { class: "iid", text: c.image_id }));
    const asRef = el("span", { class: "as-ref", role: "button", tabindex: "0", text: "use image as reference",
      onclick: (e) => { e.stopPropagation(); edit("PUT", "reference", { image_id: c.image_id }); } });
    if (S.info.references.includes(c.image_id)) card.append(asRef);
    grid.append(card);
  }
}

// ------------------------------------------------------------------ edits
async function edit(method, path, body, relabel = false) {
  if (!S.map) return;
  S.t0 = performance.now();
  await withStatus("synthesizing…", async () => {
    const st = await api(method, `/api/maps/${S.map.map_id}/${path}`, body);
    if (relabel) {
      const sel = S.selected;
      await loaded(st, false);
      if (sel !== null && sel < st.segments.length) showCandidates(sel);
    } else render(st);
  });
}

async function sendLabels() {
  if (S.sending) { S.pending = true; return; }
  S.sending = true;
  S.t0 = performance.now();
  status("synthesizing…", "busy");
  try {
    do {
      S.pending = false;
      const fd = new FormData();
      fd.append("labels", await encodeIndexPNG(S.labels, S.W, S.H), "labels.png");
      const st = await api("PUT", `/api/maps/${S.map.map_id}/labels`, fd);
      S.selected = null;
      render(st);
    } while (S.pending);
  } catch (e) { status(e.message, "error"); }
  S.sending = false;
}

function pushUndo(prev) {
  S.undo.push(prev); if (S.undo.length > UNDO_LIMIT) S.undo.shift();
  S.redo = []; syncUndo();
}
function syncUndo() { $("undo").disabled = !S.undo.length; $("redo").disabled = !S.redo.length; }
function undo() {
  if (!S.undo.length || !S.map) return;
  S.redo.push(S.labels.slice()); S.labels = S.undo.pop(); syncUndo(); drawLabels(); sendLabels();
}
function redo() {
  if (!S.redo.length || !S.map) return;
  S.undo.push(S.labels.slice()); S.labels = S.redo.pop(); syncUndo(); drawLabels(); sendLabels();
}

// ------------------------------------------------------------------ pointer: select, brush, fill
function mapXY(e, stage) {
  const r = stage.getBoundingClientRect();
  const x = Math.floor(((e.clientX - r.left) / r.width) * S.W), y = Math.floor(((e.clientY - r.top) / r.height) * S.H);
  return [Math.min(S.W - 1, Math.max(0, x)), Math.min(S.H - 1, Math.max(0, y))];
}

function dab(cx, cy) {
  const r = S.brush / 2, r2 = r * r, v = S.cls;
  for (let y = Math.max(0, Math.floor(cy - r)); y <= Math.min(S.H - 1, Math.ceil(cy + r)); y++) {
    for (let x = Math.max(0, Math.floor(cx - r)); x <= Math.min(S.W - 1, Math.ceil(cx + r)); x++) {
      const dx = x - cx, dy = y - cy;
      if (dx * dx + dy * dy <= r2 || S.brush <= 1) S.labels[y * S.W + x] = v;
    }
  }
}

function strokeTo(x, y) {
  const [lx, ly] = S.last || [x, y];
  const n = Math.max(1, Math.ceil(Math.hypot(x - lx, y - ly) / Math.max(1, S.brush / 4)));
  for (let i = 1; i <= n; i++) dab(lx + ((x - lx) * i) / n, ly + ((y - ly) * i) / n);
  S.last = [x, y];
  drawLabels();
}

function fill(x, y) {
  const W = S.W, H = S.H, L = S.labels, from = L[y * W + x], to = S.cls;
  if (from === to) return false;
  const stack = [y * W + x];
  while (stack.length) {
    const p = stack.pop();
    if (L[p] !== from) continue;
    L[p] = to;
    const px = p % W;
    if (px > 0) stack.push(p - 1);
    if (px < W - 1) stack.push(p + 1);
    if (p >= W) stack.push(p - W);
    if (p < W * (H - 1)) stack.push(p + W);
  }
  return true;
}

async function pointerDown(e, stage) {
  if (!S.map || e.button !== 0) return;
  const [x, y] = mapXY(e, stage);
  if (S.tool === "select") {
    try {
      const r = await api("GET", `/api/maps/${S.map.map_id}/segment_at?x=${x}&y=${y}`);
      if (r.index === null) { status(`pixel (${x}, ${y}) is in no segment (void or below min_area)`); S.selected = null; clearOverlays(); $("candidates-card").hidden = true; }
      else showCandidates(r.index);
    } catch (err) { status(err.message, "error"); }
    return;
  }
  if (S.tool === "fill") {
    const prev = S.labels.slice();
    if (fill(x, y)) { pushUndo(prev); drawLabels(); sendLabels(); }
    return;
  }
  e.preventDefault();
  stage.setPointerCapture(e.pointerId);
  S.painting = true; S.before = S.labels.slice(); S.last = null;
  strokeTo(x + 0.5, y + 0.5);
}

function pointerMove(e, stage) {
  if (!S.painting) return;
  const [x, y] = mapXY(e, stage);
  strokeTo(x + 0.5, y + 0.5);
}

function pointerUp() {
  if (!S.painting) return;
  S.painting = false; S.last = null;
  let changed = false;
  for (let i = 0; i < S.labels.length; i++) if (S.labels[i] !== S.before[i]) { changed = true; break; }
  if (changed) { pushUndo(S.before); sendLabels(); }
  S.before = null;
}

init();

// ------------------------------------------------------------------ variety: shuffle, samples, reference photo
function temperature() { const t = parseFloat($("temperature").value); return Number.isFinite(t) && t > 0 ? t : 1; }

function bindVariety() {
  $("shuffle-all").addEventListener("click", () => edit("POST", "shuffle", { temperature: temperature() }));
  $("shuffle-segment").addEventListener("click", () => {
    if (S.selected === null) { status("select a segment first (Select tool, click it)", "error"); return; }
    edit("POST", "shuffle", { temperature: temperature(), segment: S.selected });
  });
  $("samples-make").addEventListener("click", makeSamples);
  $("photo-form").addEventListener("submit", (e) => { e.preventDefault(); usePhoto(); });
  $("photo-off").addEventListener("click", () => edit("DELETE", "reference-photo"));
}

async function makeSamples() {
  if (!S.map) return;
  const n = Math.max(1, Math.min(16, parseInt($("samples-n").value, 10) || 4));
  await withStatus(`synthesizing ${n} samples…`, async () => {
    await api("POST", `/api/maps/${S.map.map_id}/samples`, { n, temperature: temperature() });
    render(await api("GET", `/api/maps/${S.map.map_id}`));
  });
}

async function usePhoto() {
  const pf = $("photo-file").files[0], lf = $("photo-labels").files[0];
  if (!pf || !lf) { status("choose a photo and its label map first", "error"); return; }
  const fd = new FormData(); fd.append("photo", pf); fd.append("labels", lf);
  const inf = $("photo-instances").files[0]; if (inf) fd.append("instances", inf);
  fd.append("strict", $("photo-strict").checked ? "true" : "false");
  await edit("PUT", "reference-photo", fd);
}

function renderVariety(st) {
  const ph = st.reference_photo;
  $("photo-info").textContent = ph
    ? `${ph.source}: ${ph.segments_from_photo.length} of ${st.segments.length} segments from it` +
      (ph.strict ? " (strict: classes it lacks are black)" : " (the others from the database)")
    : "off";
  const box = $("samples-strip"); box.replaceChildren();
  $("samples-card").hidden = !st.samples;
  if (!st.samples) return;
  $("samples-sub").textContent = `T = ${st.samples.temperature}, seed ${st.samples.seed} · click one to use it`;
  for (const it of st.samples.items) {
    box.append(el("button", { class: "snap", title: `sample ${it.index}`, onclick: () => edit("POST", `samples/${it.index}/apply`) },
      el("img", { src: it.image_url, alt: `sample ${it.index}` }), el("span", { text: `sample ${it.index}` })));
  }
}
