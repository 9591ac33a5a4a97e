// bench_onnx.js - ONNX Runtime (CPU execution provider) timings of the fixture exports of the
// TinySAM encoder and decoder, for the side-by-side table of `make bench`.
//
//   node bench/onnx/bench_onnx.js [--threads N] [--runs R] [--image-size WxH] [--json] [--log]
//
//   --threads N       intra-op threads (default 1); inter-op 1, sequential execution
//   --runs R          timed runs after one warm-up (default 7); medians and minima are printed
//   --image-size WxH  the original image the decoder upsamples its masks to (default 769x770,
//                     picture1: 769 wide, 770 high)
//   --json            print one flat JSON object instead of text
//   --log             ONNX Runtime's verbose log (graph optimisations, node placement)
//
// Models: $TINYSAM_FIXTURES/onnx/tinysam_vit_t_random_{encoder,decoder}.onnx, the fixtures
// defaulting to ../shared/fixtures from the repository root (as the C benchmarks).
'use strict';
const path = require('path');
const fs = require('fs');

function usage(msg) {
  if (msg) console.error('bench_onnx: ' + msg);
  console.error('usage: node bench_onnx.js [--threads N] [--runs R] [--image-size WxH] ' +
                '[--json] [--log]');
  process.exit(2);
}

const args = process.argv.slice(2);
const o = { threads: 1, runs: 7, w: 769, h: 770, json: false, log: false };
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  const val = () => {
    if (i + 1 >= args.length) usage(a + ' needs a value');
    return args[++i];
  };
  if (a === '--json') o.json = true;
  else if (a === '--log') o.log = true;
  else if (a === '--threads') o.threads = parseInt(val(), 10);
  else if (a === '--runs') o.runs = parseInt(val(), 10);
  else if (a === '--image-size') {
    const m = /^(\d+)x(\d+)$/.exec(val());
    if (!m) usage('--image-size wants WxH, e.g. 769x770');
    o.w = parseInt(m[1], 10);
    o.h = parseInt(m[2], 10);
  } else usage('unknown argument ' + a);
}
if (!(o.threads >= 1) || !(o.runs >= 1) || !(o.w >= 1) || !(o.h >= 1)) usage('bad number');

let ort;
try {
  ort = require('onnxruntime-node');
} catch (e) {
  console.error('bench_onnx: onnxruntime-node not installed (cd bench/onnx && ' +
                'npm ci --ignore-scripts): ' + e.message);
  process.exit(1);
}
const ortVersion = require('onnxruntime-node/package.json').version;

const repoRoot = path.join(__dirname, '..', '..');
const fixtures = process.env.TINYSAM_FIXTURES
  ? path.resolve(repoRoot, process.env.TINYSAM_FIXTURES)
  : path.join(repoRoot, '..', 'shared', 'fixtures');
const encPath = path.join(fixtures, 'onnx', 'tinysam_vit_t_random_encoder.onnx');
const decPath = path.join(fixtures, 'onnx', 'tinysam_vit_t_random_decoder.onnx');
for (const p of [encPath, decPath]) {
  if (!fs.existsSync(p)) {
    console.error('bench_onnx: missing ' + p + ' (set TINYSAM_FIXTURES)');
    process.exit(1);
  }
}

const stats = (v) => {
  const s = [...v].sort((a, b) => a - b);
  return { median: s[Math.floor(s.length / 2)], min: s[0] };
};

// one warm-up call (arena growth, kernel packing), then `runs` timed calls
async function timeIt(fn, runs) {
  await fn(-1);
  const t = [];
  for (let r = 0; r < runs; r++) {
    const t0 = process.hrtime.bigint();
    await fn(r);
    t.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return stats(t);
}

const f32 = (data, dims) => new ort.Tensor('float32', Float32Array.from(data), dims);

(async () => {
  // The package bundles only the CPU provider's binary (plus webgpu, not used); naming 'cpu'
  // explicitly makes session creation fail rather than silently pick anything else.
  const so = {
    executionProviders: ['cpu'],
    intraOpNumThreads: o.threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    logSeverityLevel: o.log ? 0 : 3,
    logVerbosityLevel: 0,
  };
  const enc = await ort.InferenceSession.create(encPath, so);
  const dec = await ort.InferenceSession.create(decPath, so);

  // Deterministic input in the range of a normalised image; the content does not change the
  // work (no data-dependent paths in the graph).
  const img = new Float32Array(3 * 1024 * 1024);
  let s = 12345;
  for (let i = 0; i < img.length; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    img[i] = ((s >>> 8) & 0xffff) / 16384 - 2;
  }
  const image = new ort.Tensor('float32', img, [1, 3, 1024, 1024]);
  let emb = null;
  const encT = await timeIt(async () => {
    emb = (await enc.run({ image })).image_embeddings;
  }, o.runs);

  // One point + the padding point (label -1) that the ONNX wrapper expects from the caller
  // when there is no box; coordinates in the 1024 frame (long side scaled to 1024).
  const scale = 1024 / Math.max(o.w, o.h);
  const feedsFor = (x, y) => ({
    image_embeddings: emb,
    point_coords: f32([x * scale, y * scale, 0, 0], [1, 2, 2]),
    point_labels: f32([1, -1], [1, 2]),
    mask_input: new ort.Tensor('float32', new Float32Array(256 * 256), [1, 1, 256, 256]),
    has_mask_input: f32([0], [1]),
    orig_im_size: f32([o.h, o.w], [2]),
  });
  const single = feedsFor(o.w * 0.5, o.h * 0.4);
  let masksDims = null;
  const decT = await timeIt(async () => {
    masksDims = (await dec.run(single)).masks.dims;
  }, o.runs);

  // 64 prompts: one call if the export accepts a batch of point sets, else 64 calls in a row
  // (an 8x8 grid of points, as a caller without batching would do it).
  let batchOk = true;
  try {
    const b = feedsFor(0, 0);
    b.point_coords = new ort.Tensor('float32', new Float32Array(64 * 2 * 2), [64, 2, 2]);
    b.point_labels = new ort.Tensor('float32', new Float32Array(64 * 2).fill(1), [64, 2]);
    await dec.run(b);
  } catch (e) {
    batchOk = false; // the export fixes point_coords' first dimension to 1
  }
  const grid = [];
  for (let i = 0; i < 64; i++) {
    const gx = ((i % 8) * 128 + 64) / 1024, gy = (Math.floor(i / 8) * 128 + 64) / 1024;
    grid.push(feedsFor(gx * o.w, gy * o.h));
  }
  // once: the single-prompt runs above were its warm-up, and 64 calls take seconds
  const seqT = await timeIt(async (r) => {
    if (r >= 0) for (const f of grid) await dec.run(f);
  }, 1);

  const out = {
    engine: 'onnxruntime-node',
    ort_version: ortVersion,
    execution_provider: 'cpu',
    threads: o.threads,
    runs: o.runs,
    image_w: o.w,
    image_h: o.h,
    encoder_ms: +encT.median.toFixed(2),
    encoder_min_ms: +encT.min.toFixed(2),
    decoder_ms: +decT.median.toFixed(2),
    decoder_min_ms: +decT.min.toFixed(2),
    decoder_masks: masksDims ? masksDims[1] : 0,
    decoder_batch64_supported: batchOk,
    decoder_seq64_ms_per_prompt: +(seqT.median / 64).toFixed(2),
    peak_rss_mb: +(process.resourceUsage().maxRSS / 1024).toFixed(1),
  };
  if (o.json) {
    console.log(JSON.stringify(out));
    return;
  }
  const f = (x) => x.toFixed(1);
  console.log(`onnxruntime-node ${ortVersion}, CPU execution provider, ${o.threads} ` +
              `thread(s), ${o.runs} runs`);
  console.log(`  encoder: median ${f(encT.median)} ms (min ${f(encT.min)})`);
  console.log(`  decoder, one prompt, ${out.decoder_masks} masks at ${o.w}x${o.h}: ` +
              `median ${f(decT.median)} ms (min ${f(decT.min)})`);
  console.log(`  decoder, 64 prompts ${batchOk ? '(batch accepted, timed as 64 calls)'
    : '(no batch dimension in the export: 64 calls)'}: ${f(seqT.median / 64)} ms per prompt`);
  console.log(`  peak RSS ${f(out.peak_rss_mb)} MB`);
})().catch((e) => {
  console.error('bench_onnx: ' + (e && e.message ? e.message : e));
  process.exit(1);
});
