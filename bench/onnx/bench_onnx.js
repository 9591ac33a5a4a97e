// bench_onnx.js - ONNX Runtime (CPU) timings of the fixture encoder and decoder exports, for
// the side-by-side table of `make bench`. Usage: node bench_onnx.js --threads N [--runs R] [--json]
'use strict';
const ort = require('onnxruntime-node');
const path = require('path');

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : def;
};
const threads = parseInt(opt('--threads', '1'), 10);
const runs = parseInt(opt('--runs', '5'), 10);
const json = args.includes('--json');
const root = process.env.TINYSAM_FIXTURES ||
  path.join(__dirname, '..', '..', '..', 'shared', 'fixtures');

function median(v) {
  const s = [...v].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function timeIt(fn) {
  await fn(); // warm-up
  const t = [];
  for (let r = 0; r < runs; r++) {
    const t0 = process.hrtime.bigint();
    await fn();
    t.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return median(t);
}

(async () => {
  const so = {
    intraOpNumThreads: threads, interOpNumThreads: 1, executionMode: 'sequential',
    graphOptimizationLevel: 'all',
  };
  const enc = await ort.InferenceSession.create(
    path.join(root, 'onnx', 'tinysam_vit_t_random_encoder.onnx'), so);
  const dec = await ort.InferenceSession.create(
    path.join(root, 'onnx', 'tinysam_vit_t_random_decoder.onnx'), so);
  const img = new Float32Array(3 * 1024 * 1024);
  for (let i = 0; i < img.length; i++) img[i] = Math.sin(i * 0.001);
  const image = new ort.Tensor('float32', img, [1, 3, 1024, 1024]);
  let emb;
  const encMs = await timeIt(async () => {
    emb = (await enc.run({ image })).image_embeddings;
  });
  // one point + the padding point (label -1) the ONNX wrapper expects from the caller;
  // masks at picture1's size (770 x 769), as our end-to-end decoder timing does
  const feeds = {
    image_embeddings: emb,
    point_coords: new ort.Tensor('float32', new Float32Array([506.5, 399.5, 0, 0]), [1, 2, 2]),
    point_labels: new ort.Tensor('float32', new Float32Array([1, -1]), [1, 2]),
    mask_input: new ort.Tensor('float32', new Float32Array(256 * 256), [1, 1, 256, 256]),
    has_mask_input: new ort.Tensor('float32', new Float32Array([0]), [1]),
    orig_im_size: new ort.Tensor('float32', new Float32Array([770, 769]), [2]),
  };
  const decMs = await timeIt(async () => { await dec.run(feeds); });
  const out = { ort_version: require('onnxruntime-node/package.json').version, threads,
    encoder_ms: encMs, decoder_ms: decMs };
  if (json) console.log(JSON.stringify(out));
  else console.log(`onnxruntime ${out.ort_version}, ${threads} thread(s): encoder ${encMs.toFixed(1)} ms, ` +
                   `decoder (one prompt, masks at 770x769) ${decMs.toFixed(1)} ms`);
})().catch((e) => { console.error('bench_onnx: ' + e.message); process.exit(1); });
