// app.js - the tinysam serve page: upload, prompts, masks, everything mode, downloads.
// Plain browser JavaScript, no build step. Talks to the JSON API of `tinysam serve`.
'use strict';

const $ = (id) => document.getElementById(id);
const imageLayer = $('image-layer'), maskLayer = $('mask-layer'), promptLayer = $('prompt-layer');

// Everything the page knows. `history` holds earlier {prompts, result, selected} snapshots
// for undo, so undo restores the earlier masks without asking the server again.
const state = {
  id: null, width: 0, height: 0, name: 'image',
  prompts: { points: [], box: null },   // points: {x, y, label}; box: [x0, y0, x1, y1]
  result: null,      // last segment answer: {handle, iou, best, masks: [Uint8Array], raw}
  selected: 0,
  history: [],
  everything: null,  // {records, masks: [Uint8Array]}
  busy: 0,
  generation: 0,     // bumps on every new image, so late answers for an old one are dropped
  lastRequest: null, // the last segment request body (read by the end-to-end test)
};
window.tinysam = state;

// ------------------------------------------------------------------ status

function setStatus(text, isError) {
  $('status').textContent = text;
  $('status').classList.toggle('error', !!isError);
}

function busy(delta) {
  state.busy += delta;
  $('spinner').hidden = state.busy === 0;
  document.body.dataset.busy = state.busy > 0 ? '1' : '0';
}

function updateButtons() {
  const have = !!state.id;
  $('undo').disabled = !have || state.history.length === 0;
  $('clear').disabled = !have || (!state.result && !state.everything &&
    state.prompts.points.length === 0 && !state.prompts.box);
  $('everything').disabled = !have;
  $('dl-png').disabled = !state.result;
  $('dl-rle').disabled = !state.result && !state.everything;
}

async function api(path, body, type) {
  const res = await fetch(path, {
    method: 'POST', body,
    headers: { 'Content-Type': type || 'application/json' },
  });
  let data = null;
  try { data = await res.json(); } catch (e) { /* not JSON: reported below */ }
  if (!res.ok) {
    const err = new Error((data && data.error) || `HTTP ${res.status}`);
    err.status = res.status;
    throw err;
  }
  return data;
}

// ------------------------------------------------------------------ COCO RLE

// Decodes a COCO compressed RLE string (pycocotools' rleFrString) into run lengths.
function rleCounts(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = 1, c = 0;
    while (more) {
      c = s.charCodeAt(p++) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

// Row-major 0/1 mask of {size: [h, w], counts} (runs are column-major, zeros first).
function rleDecode(seg) {
  const [h, w] = seg.size;
  const mask = new Uint8Array(w * h);
  const counts = typeof seg.counts === 'string' ? rleCounts(seg.counts) : seg.counts;
  let i = 0;
  for (let r = 0; r < counts.length; r++) {
    const end = i + counts[r];
    if (r & 1) {
      for (let j = i; j < end; j++) {
        const x = (j / h) | 0, y = j - x * h;
        mask[y * w + x] = 1;
      }
    }
    i = end;
  }
  return mask;
}

// ------------------------------------------------------------------ drawing

const PALETTE = [[30, 144, 255], [255, 99, 71], [60, 179, 113], [255, 215, 0], [186, 85, 211],
  [0, 206, 209], [255, 140, 0], [154, 205, 50], [255, 105, 180], [100, 149, 237],
  [210, 105, 30], [127, 255, 212]];

function paintMasks(list) {
  // list: [{mask, color}], painted in order (later on top)
  const ctx = maskLayer.getContext('2d');
  const img = ctx.createImageData(state.width, state.height);
  const d = img.data;
  for (const { mask, color } of list) {
    for (let i = 0; i < mask.length; i++) {
      if (!mask[i]) continue;
      d[4 * i] = color[0]; d[4 * i + 1] = color[1]; d[4 * i + 2] = color[2]; d[4 * i + 3] = 140;
    }
  }
  ctx.putImageData(img, 0, 0);
}

function drawMasks() {
  if (state.everything) {
    const masks = state.everything.masks.map((mask, i) => ({ mask, i, area: state.everything.records[i].area }));
    masks.sort((a, b) => b.area - a.area); // small masks stay visible on top
    paintMasks(masks.map(({ mask, i }) => ({ mask, color: PALETTE[i % PALETTE.length] })));
  } else if (state.result) {
    paintMasks([{ mask: state.result.masks[state.selected], color: PALETTE[0] }]);
  } else {
    maskLayer.getContext('2d').clearRect(0, 0, state.width, state.height);
  }
}

let dragBox = null;

function drawPrompts() {
  const ctx = promptLayer.getContext('2d');
  ctx.clearRect(0, 0, state.width, state.height);
  const scale = state.width / promptLayer.getBoundingClientRect().width || 1;
  const r = 6 * scale;
  const box = dragBox || state.prompts.box;
  if (box) {
    ctx.lineWidth = 2 * scale;
    ctx.strokeStyle = '#28dc3c';
    ctx.setLineDash(dragBox ? [6 * scale, 4 * scale] : []);
    ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
    ctx.setLineDash([]);
  }
  for (const p of state.prompts.points) {
    ctx.beginPath();
    ctx.arc(p.x, p.y, r, 0, 2 * Math.PI);
    ctx.fillStyle = p.label ? '#28dc3c' : '#eb2828';
    ctx.fill();
    ctx.lineWidth = 1.5 * scale;
    ctx.strokeStyle = '#fff';
    ctx.stroke();
  }
}

function showCandidates() {
  const box = $('candidates');
  box.textContent = '';
  if (!state.result) return;
  state.result.iou.forEach((iou, k) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.dataset.index = k;
    b.className = (k === state.selected ? 'selected ' : '') + (k === state.result.best ? 'best' : '');
    b.innerHTML = `<span>Mask ${k}</span><span>IoU ${iou.toFixed(3)}</span>`;
    b.addEventListener('click', () => {
      state.selected = k;
      showCandidates();
      drawMasks();
    });
    box.appendChild(b);
  });
}

function render() {
  drawMasks();
  drawPrompts();
  showCandidates();
  updateButtons();
}

// ------------------------------------------------------------------ image upload

async function openImage(file) {
  if (!file) return;
  if (!/^image\/(jpeg|png)$/.test(file.type) && !/\.(jpe?g|png)$/i.test(file.name)) {
    setStatus(`${file.name}: not a JPEG or PNG image`, true);
    return;
  }
  const gen = ++state.generation;
  Object.assign(state, { id: null, prompts: { points: [], box: null }, result: null,
    history: [], everything: null, selected: 0, name: file.name.replace(/\.[^.]*$/, '') });
  // Show the image at once; the browser's decoder may differ from ours only in EXIF
  // handling, and the server's size decides the canvas below.
  try {
    const bitmap = await createImageBitmap(file, { imageOrientation: 'from-image' });
    setCanvasSize(bitmap.width, bitmap.height);
    imageLayer.getContext('2d').drawImage(bitmap, 0, 0);
    $('stage').classList.remove('empty');
  } catch (e) { /* the server will say what is wrong with it */ }
  render();
  setStatus(`Encoding ${file.name}…`);
  busy(+1);
  try {
    const t0 = performance.now();
    const info = await api('/api/images', file, 'application/octet-stream');
    if (gen !== state.generation) return;
    if (info.width !== state.width || info.height !== state.height) setCanvasSize(info.width, info.height);
    state.id = info.id;
    const secs = ((performance.now() - t0) / 1000).toFixed(1);
    setStatus(`${file.name}: ${info.width}×${info.height}, ` +
      (info.cached ? 'embedding cached' : `encoded in ${(info.encode_ms / 1000).toFixed(1)} s`) +
      ` (${secs} s round trip). Click to segment.`);
    document.body.dataset.ready = '1';
  } catch (e) {
    if (gen === state.generation) setStatus(`Upload failed: ${e.message}`, true);
  } finally {
    busy(-1);
    render();
  }
}

function setCanvasSize(w, h) {
  state.width = w;
  state.height = h;
  for (const c of [imageLayer, maskLayer, promptLayer]) {
    c.width = w;
    c.height = h;
  }
}

// ------------------------------------------------------------------ segmentation

function snapshot() {
  return { prompts: JSON.parse(JSON.stringify(state.prompts)), result: state.result,
    selected: state.selected, everything: state.everything };
}

async function segment() {
  const gen = state.generation;
  const { points, box } = state.prompts;
  if (points.length === 0 && !box) {
    state.result = null;
    render();
    return;
  }
  const body = {
    points: points.map((p) => [p.x, p.y]),
    labels: points.map((p) => p.label),
    box: box,
    // refine from the mask on screen, as SAM's demo does (logits kept by the server)
    previous: state.result ? { handle: state.result.handle, index: state.selected } : null,
  };
  busy(+1);
  try {
    let res;
    try {
      state.lastRequest = body;
      res = await api(`/api/images/${state.id}/segment`, JSON.stringify(body));
    } catch (e) {
      if (e.status !== 410 || !body.previous) throw e;
      body.previous = null; // the server no longer has those logits: start afresh
      state.lastRequest = body;
      res = await api(`/api/images/${state.id}/segment`, JSON.stringify(body));
    }
    if (gen !== state.generation) return;
    state.result = { handle: res.handle, iou: res.iou, best: res.best, raw: res.masks,
      masks: res.masks.map(rleDecode) };
    state.selected = res.best;
    state.everything = null;
    setStatus(`Best mask ${res.best} (IoU ${res.iou[res.best].toFixed(3)}), ` +
      `decoded in ${res.decode_ms.toFixed(0)} ms.`);
  } catch (e) {
    if (e.status === 404) state.id = null;
    setStatus(`Segmentation failed: ${e.message}`, true);
  } finally {
    busy(-1);
    render();
  }
}

function addPrompt(change) {
  if (!state.id) return;
  state.history.push(snapshot());
  change();
  drawPrompts();
  segment();
}

function undo() {
  const prev = state.history.pop();
  if (!prev) return;
  Object.assign(state, prev);
  render();
}

function clearAll() {
  if (!state.id) return;
  state.history.push(snapshot());
  Object.assign(state, { prompts: { points: [], box: null }, result: null, everything: null });
  $('ev-info').textContent = '';
  render();
}

// ------------------------------------------------------------------ mouse

function toImage(ev) {
  const r = promptLayer.getBoundingClientRect();
  const x = ((ev.clientX - r.left) * state.width) / r.width;
  const y = ((ev.clientY - r.top) * state.height) / r.height;
  const clamp = (v, hi) => Math.min(Math.max(v, 0), hi);
  return [Math.round(clamp(x, state.width) * 10) / 10, Math.round(clamp(y, state.height) * 10) / 10];
}

let down = null; // {x, y, clientX, clientY, negative}

promptLayer.addEventListener('contextmenu', (ev) => ev.preventDefault());
promptLayer.addEventListener('mousedown', (ev) => {
  if (!state.id || (ev.button !== 0 && ev.button !== 2)) return;
  const [x, y] = toImage(ev);
  down = { x, y, clientX: ev.clientX, clientY: ev.clientY, negative: ev.button === 2 || ev.shiftKey };
  ev.preventDefault();
});
window.addEventListener('mousemove', (ev) => {
  if (!down || down.negative) return;
  if (Math.hypot(ev.clientX - down.clientX, ev.clientY - down.clientY) < 5) return;
  const [x, y] = toImage(ev);
  dragBox = [Math.min(down.x, x), Math.min(down.y, y), Math.max(down.x, x), Math.max(down.y, y)];
  drawPrompts();
});
window.addEventListener('mouseup', (ev) => {
  if (!down) return;
  const d = down;
  down = null;
  if (dragBox) {
    const box = dragBox;
    dragBox = null;
    addPrompt(() => { state.prompts.box = box; });
    return;
  }
  if (ev.target !== promptLayer) return;
  addPrompt(() => state.prompts.points.push({ x: d.x, y: d.y, label: d.negative ? 0 : 1 }));
});

// ------------------------------------------------------------------ everything

async function everything() {
  const gen = state.generation;
  const opts = {
    mode: $('ev-mode').value,
    points_per_side: Number($('ev-pps').value),
    pred_iou_thresh: Number($('ev-iou').value),
    stability_score_thresh: Number($('ev-stab').value),
  };
  busy(+1);
  $('everything').disabled = true;
  setStatus('Segmenting everything…');
  try {
    const res = await api(`/api/images/${state.id}/everything`, JSON.stringify(opts));
    if (gen !== state.generation) return;
    state.history.push(snapshot());
    state.everything = { records: res.records, masks: res.records.map((r) => rleDecode(r.segmentation)) };
    $('ev-info').textContent = `${res.masks} masks, ${res.points_evaluated.total} points, ` +
      `${(res.timings_ms.total / 1000).toFixed(1)} s`;
    document.body.dataset.everything = String(res.masks);
    setStatus(`Everything: ${res.masks} masks.`);
  } catch (e) {
    setStatus(`Everything failed: ${e.message}`, true);
  } finally {
    busy(-1);
    render();
  }
}

// ------------------------------------------------------------------ downloads

function download(blob, name) {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

function downloadPng() {
  if (!state.result) return;
  const c = document.createElement('canvas');
  c.width = state.width;
  c.height = state.height;
  const ctx = c.getContext('2d');
  const img = ctx.createImageData(state.width, state.height);
  const m = state.result.masks[state.selected];
  for (let i = 0; i < m.length; i++) {
    const v = m[i] ? 255 : 0;
    img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = v;
    img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  c.toBlob((b) => download(b, `${state.name}_mask_${state.selected}.png`), 'image/png');
}

function downloadRle() {
  let records;
  if (state.everything) {
    records = state.everything.records;
  } else if (state.result) {
    records = state.result.raw.map((m, k) => ({
      segmentation: { size: m.size, counts: m.counts }, area: m.area,
      predicted_iou: state.result.iou[k], selected: k === state.selected,
    }));
  } else {
    return;
  }
  download(new Blob([JSON.stringify(records)], { type: 'application/json' }), `${state.name}_masks.json`);
}

// ------------------------------------------------------------------ wiring

$('file').addEventListener('change', (ev) => openImage(ev.target.files[0]));
const stage = $('stage');
stage.addEventListener('dragover', (ev) => { ev.preventDefault(); stage.classList.add('drag'); });
stage.addEventListener('dragleave', () => stage.classList.remove('drag'));
stage.addEventListener('drop', (ev) => {
  ev.preventDefault();
  stage.classList.remove('drag');
  openImage(ev.dataTransfer.files[0]);
});
$('undo').addEventListener('click', undo);
$('clear').addEventListener('click', clearAll);
$('everything').addEventListener('click', everything);
$('dl-png').addEventListener('click', downloadPng);
$('dl-rle').addEventListener('click', downloadRle);
window.addEventListener('keydown', (ev) => {
  if ((ev.ctrlKey || ev.metaKey) && ev.key === 'z') { ev.preventDefault(); undo(); }
  if (ev.key === 'Escape') clearAll();
});
window.addEventListener('resize', drawPrompts);
updateButtons();
