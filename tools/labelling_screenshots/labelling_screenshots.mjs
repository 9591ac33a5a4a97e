// labelling_screenshots.mjs - the README's Label Studio screenshots, made by Label Studio's
// own front end: `tinysam serve` answers Label Studio-shaped /predict requests (a smart
// keypoint, a smart rectangle, a pre-annotation call without a prompt) for picture1, and
// Label Studio's front end (LSF, @heartexlabs/label-studio from npm, served from
// node_modules on loopback: no internet) renders the task with our brush results in Debian's
// chromium. Each brush LSF decoded (its own bundled @thi.ng/rle-pack) is read back from the
// page, drawn at the image's natural size, and must equal our mask pixel for pixel, which
// must equal `tinysam segment`'s best mask for the same prompt. X-AnyLabeling (a desktop Qt
// application) cannot run here: the polygons of POST /v1/predict for a rectangle mark are
// drawn as SVG by a page of ours instead (docs/xanylabeling_polygons.png), checked against
// `tinysam segment --format polygons`.
//
//   make screenshots      (= cd tools/labelling_screenshots && npm ci --ignore-scripts &&
//                            node labelling_screenshots.mjs [--out-dir ../../docs])
//
// Not part of make test or CI (a maintainer tool; its output is committed under docs/).
// Environment: TINYSAM_BIN (default $BUILD/tinysam, BUILD=build), TINYSAM_FIXTURES (default
// ../shared/fixtures from the repository root), CHROMIUM (default /usr/bin/chromium).
// The model is the random-weight fixture: the masks show the protocol, not segmentation
// quality.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startServe } from '../../tests/server/serve_process.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const require = createRequire(import.meta.url);
// the decoder LSF itself depends on (its bundle carries a copy of the same package)
const { decode } = await import(require.resolve('@thi.ng/rle-pack'));
const bin = path.resolve(root, process.env.TINYSAM_BIN || `${process.env.BUILD || 'build'}/tinysam`);
const fixtures = path.resolve(root, process.env.TINYSAM_FIXTURES || '../shared/fixtures');
const model = path.join(fixtures, 'models/tinysam_vit_t_random.pth');
const imageFile = path.join(fixtures, 'images/picture1.jpg');
const outArg = process.argv.indexOf('--out-dir');
const outDir = path.resolve(outArg > 0 ? process.argv[outArg + 1] : path.join(root, 'docs'));
const lsfDir = path.join(path.dirname(require.resolve('@heartexlabs/label-studio/package.json')),
  'build/static');
const lsfVersion = JSON.parse(fs.readFileSync(
  require.resolve('@heartexlabs/label-studio/package.json'), 'utf8')).version;
const KEY = 'ls-api-key-for-screenshots'; // the "Label Studio API key" tinysam sends for images
const W = 769, H = 770;                  // picture1

// The labelling interface of the README (Label Studio > project > Settings > Labeling
// Interface), verbatim.
const labelConfig = `<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image"><Label value="Object" background="#00ff44"/></BrushLabels>
  <KeyPointLabels name="tag2" toName="image" smart="true"><Label value="Object" smart="true" background="#00e5ff"/></KeyPointLabels>
  <RectangleLabels name="tag3" toName="image" smart="true"><Label value="Object" background="#00e5ff"/></RectangleLabels>
</View>`;

// The prompts, as Label Studio's front end sends them in params.context.result: percent
// of the original size (a click on the guitar; a box around the "STAGE" sign).
const keypoint = {
  id: 'kp1', from_name: 'tag2', to_name: 'image', type: 'keypointlabels', origin: 'manual',
  original_width: W, original_height: H, image_rotation: 0, is_positive: true,
  value: { x: 42.9, y: 19.5, width: 1.0, keypointlabels: ['Object'] },
};
const rectangle = {
  id: 'rc1', from_name: 'tag3', to_name: 'image', type: 'rectanglelabels', origin: 'manual',
  original_width: W, original_height: H, image_rotation: 0,
  value: { x: 7.8, y: 33.8, width: 75.4, height: 33.8, rotation: 0, rectanglelabels: ['Object'] },
};

let failures = 0;
function check(name, ok, detail) {
  console.log(`${ok ? 'ok' : 'FAIL'} ${name}${detail ? ': ' + detail : ''}`);
  if (!ok) failures++;
}

// ------------------------------------------------ a stand-in for Label Studio's web server
// /data/upload/1/picture1.jpg: the task's image as Label Studio stores it, for tinysam
// (checks the API key, as Label Studio does); /img/picture1.jpg: the same for the browser
// (Label Studio would use its session cookie); /lsf/*: the front end's bundle from
// node_modules; /: the page that mounts it (set per shot with /?shot=NAME).
const pages = new Map();
const lsServer = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  const send = (status, type, body) => {
    res.writeHead(status, { 'Content-Type': type });
    res.end(body);
  };
  if (url.pathname === '/data/upload/1/picture1.jpg') {
    if (req.headers.authorization !== `Token ${KEY}`) return send(401, 'text/plain', 'no token');
    return send(200, 'image/jpeg', fs.readFileSync(imageFile));
  }
  if (url.pathname === '/img/picture1.jpg') return send(200, 'image/jpeg', fs.readFileSync(imageFile));
  if (url.pathname === '/lsf/main.js')
    return send(200, 'text/javascript', fs.readFileSync(path.join(lsfDir, 'js/main.js')));
  if (url.pathname === '/lsf/main.css')
    return send(200, 'text/css', fs.readFileSync(path.join(lsfDir, 'css/main.css')));
  if (url.pathname === '/' && pages.has(url.searchParams.get('shot')))
    return send(200, 'text/html; charset=utf-8', pages.get(url.searchParams.get('shot')));
  send(404, 'text/plain', 'not found');
});
await new Promise((r) => lsServer.listen(0, '127.0.0.1', r));
const lsUrl = `http://127.0.0.1:${lsServer.address().port}`;

// ------------------------------------------------ tinysam serve, as Label Studio's ML backend
async function startTinysam() {
  // relaxed generator options, so that the random-weight model yields masks (as in
  // tests/server/test_labelling.c); a token, as on a shared machine
  const { proc, info, base } = await startServe(bin, ['--model', model, '--token', 'auto',
    '--label-studio-url', lsUrl, '--label-studio-api-key', KEY,
    '--everything-option', 'mode=grid', '--everything-option', 'points_per_side=4',
    '--everything-option', 'pred_iou_thresh=0', '--everything-option', 'stability_score_thresh=0.5',
    '--everything-option', 'box_nms_thresh=0.7']);
  return { proc, base, token: new URL(info.url).searchParams.get('token') };
}

// POST /predict as Label Studio sends it (Basic auth: any user, the serve token as password)
async function predict(ts, context) {
  const body = {
    tasks: [{ id: 1, data: { image: '/data/upload/1/picture1.jpg' } }],
    project: '1.1700000000', label_config: labelConfig,
    params: { login: null, password: null, context },
  };
  const t0 = performance.now();
  const r = await fetch(`${ts.base}/predict`, {
    method: 'POST', body: JSON.stringify(body),
    headers: {
      'Content-Type': 'application/json',
      Authorization: 'Basic ' + Buffer.from(`label-studio:${ts.token}`).toString('base64'),
    },
  });
  const text = await r.text();
  if (r.status !== 200) throw new Error(`/predict: HTTP ${r.status}: ${text.slice(0, 300)}`);
  return { answer: JSON.parse(text), ms: performance.now() - t0 };
}

// a brush result decoded (4 values per pixel, RGBA; 255 = in the mask) as one byte per pixel
function brushMask(result) {
  const v = decode(Uint8Array.from(result.value.rle));
  if (v.length !== W * H * 4) throw new Error(`brush decodes to ${v.length} values, not ${W * H * 4}`);
  const m = new Uint8Array(W * H);
  for (let i = 0; i < m.length; i++) m[i] = v[4 * i + 3] ? 1 : 0;
  return m;
}

// `tinysam segment`'s best mask for the same prompt (pixels as the backend computes them:
// trunc(percent x size / 100)), decoded from its PNG by the browser: one byte per pixel
const px = (pc, size) => Math.trunc(pc * size / 100);
async function cliBestMask(page, promptArgs) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tinysam-shots-'));
  try {
    const out = JSON.parse(execFileSync(bin, ['segment', '--model', model, '--image', imageFile,
      ...promptArgs, '--out-dir', dir], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }));
    const png = fs.readFileSync(out.masks[out.best]).toString('base64');
    const b64 = await page.evaluate(async (data) => {
      const bmp = await createImageBitmap(await (await fetch('data:image/png;base64,' + data)).blob());
      const c = new OffscreenCanvas(bmp.width, bmp.height), ctx = c.getContext('2d');
      ctx.drawImage(bmp, 0, 0);
      const d = ctx.getImageData(0, 0, bmp.width, bmp.height).data;
      let bin = '';
      for (let i = 0; i < d.length; i += 4) bin += d[i] ? '\x01' : '\x00';
      return btoa(bin);
    }, png);
    return Uint8Array.from(Buffer.from(b64, 'base64'));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

// ------------------------------------------------ the page mounting Label Studio's front end
function lsfPage(task, maxWidth) {
  const config = maxWidth ? labelConfig.replace('zoom="true"', `zoom="true" maxWidth="${maxWidth}"`)
    : labelConfig;
  return `<!doctype html><html><head><meta charset="utf-8">
<title>Label Studio front end ${lsfVersion} + tinysam serve</title>
<link rel="stylesheet" href="/lsf/main.css">
<style>body { margin: 0; background: #fff; }</style></head>
<body><div id="label-studio"></div>
<script src="/lsf/main.js"></script>
<script>
window.lsf = new LabelStudio("label-studio", {
  config: ${JSON.stringify(config)},
  interfaces: ["panel", "controls", "side-column", "annotations:menu", "annotations:current",
               "predictions:menu", "predictions:tabs", "annotations:tabs", "topbar",
               "auto-annotation"],
  user: { id: 1, username: "tinysam", firstName: "tinysam", lastName: "" },
  task: ${JSON.stringify(task)},
});
</script></body></html>`;
}

// Waits until LSF has drawn every brush region of the selected annotation/prediction, then
// reads back, per brush, the pixels its Konva layer holds (alpha > 0) at the stage's size:
// their count and the bitmap (MSB-first bits, base64).
async function drawnBrushes(page, nBrushes) {
  await page.waitForFunction((n) => {
    const sel = window.Htx?.annotationStore?.selected;
    const brushes = sel?.regions?.filter((r) => r.type === 'brushregion') ?? [];
    if (brushes.length !== n || !brushes.every((r) => r.layerRef)) return false;
    // drawn: every layer holds some opaque pixel
    return brushes.every((r) => {
      const c = r.layerRef.canvas._canvas;
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      for (let i = 3; i < d.length; i += 4) if (d[i]) return true;
      return false;
    });
  }, nBrushes, { timeout: 60000, polling: 250 });
  return page.evaluate(() => {
    const img = window.Htx.annotationStore.selected.regions.find((r) => r.type === 'brushregion').parent;
    const out = { stage: [img.stageWidth, img.stageHeight], natural: [img.naturalWidth, img.naturalHeight], counts: [] };
    for (const r of window.Htx.annotationStore.selected.regions) {
      if (r.type !== 'brushregion') continue;
      const c = r.layerRef.canvas._canvas;
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      const bits = new Uint8Array((c.width * c.height + 7) >> 3);
      let n = 0;
      for (let p = 0; p < c.width * c.height; p++)
        if (d[4 * p + 3]) { n++; bits[p >> 3] |= 0x80 >> (p & 7); }
      let bin = '';
      for (let i = 0; i < bits.length; i++) bin += String.fromCharCode(bits[i]);
      out.counts.push({ id: r.cleanId ?? r.id, canvas: [c.width, c.height], pixels: n, bits: btoa(bin) });
    }
    return out;
  });
}

// Keeps the committed PNGs small (< 300 KB): a 256-colour octree palette, no dithering, with PIL
// (Debian's python3-pil); without it the full-colour PNG (~1.1 MB) stays.
function shrink(file) {
  const py = 'import sys\nfrom PIL import Image\n' +
    'im = Image.open(sys.argv[1]).convert("RGB")\n' +
    'im.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)' +
    '.save(sys.argv[1], optimize=True)\n';
  try {
    execFileSync(process.env.PYTHON || '/usr/bin/python3', ['-c', py, file], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    console.log(`note: ${path.basename(file)} left in full colour (python3 with PIL: ${String(e.stderr || e).trim().split('\n').pop()})`);
  }
}

// ------------------------------------------------ main
const ts = await startTinysam();
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu'],
});
try {
  const kp = await predict(ts, { result: [keypoint] });
  const rc = await predict(ts, { result: [rectangle] });
  const pre = await predict(ts, {});
  console.log(`/predict: keypoint ${kp.ms.toFixed(0)} ms (encodes picture1), rectangle ` +
    `${rc.ms.toFixed(0)} ms, pre-annotation ${pre.ms.toFixed(0)} ms`);

  const brushes = (a) => a.answer.results[0].result;
  // what Label Studio does with an interactive answer: its regions join the annotation beside
  // the prompt; a pre-annotation's results become the task's prediction
  const shots = [
    { name: 'label_studio_keypoint', cli: ['--point', `${px(keypoint.value.x, W)},${px(keypoint.value.y, H)}`], task: { annotations: [{ id: 1, result: [keypoint, ...brushes(kp)] }] }, results: brushes(kp) },
    { name: 'label_studio_rectangle', cli: ['--box', [px(rectangle.value.x, W), px(rectangle.value.y, H),
      px(rectangle.value.x + rectangle.value.width, W), px(rectangle.value.y + rectangle.value.height, H)].join(',')], task: { annotations: [{ id: 1, result: [rectangle, ...brushes(rc)] }] }, results: brushes(rc) },
    { name: 'label_studio_preannotation', task: { predictions: [{ id: 1, model_version: pre.answer.results[0].model_version, score: pre.answer.results[0].score, result: brushes(pre) }] }, results: brushes(pre) },
  ];
  const shotSize = { width: 1100, height: 830 };
  const page = await browser.newPage({ viewport: shotSize });
  // Label Studio's "Auto-Annotation" switch on (LSF keeps it in localStorage): the smart
  // keypoint and rectangle tools show in the toolbar, as with an ML backend connected
  await page.addInitScript(() => localStorage.setItem('autoAnnotation', 'true'));
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  fs.mkdirSync(outDir, { recursive: true });
  for (const s of shots) {
    const masks = s.results.map(brushMask);
    const want = masks.map((m) => m.reduce((a, b) => a + b, 0));
    if (s.cli) { // the interactive answer is the CLI's best mask for the same prompt
      const cliMask = await cliBestMask(page, s.cli);
      let d = cliMask.length === W * H ? 0 : -1;
      for (let p = 0; d >= 0 && p < W * H; p++) if (cliMask[p] !== masks[0][p]) d++;
      check(`${s.name}: our brush = \`tinysam segment ${s.cli.join(' ')}\`'s best mask`, d === 0,
        `${d} differing pixels`);
    }
    const task = { id: 1, data: { image: `${lsUrl}/img/picture1.jpg` }, ...s.task };
    // 1. at the image's natural size (maxWidth = its width): LSF's drawn brush layers hold
    //    exactly the decoded mask, pixel for pixel, so the counts must be equal
    await page.setViewportSize({ width: 1400, height: 1100 }); // room for 769 x 770
    pages.set(`${s.name}-check`, lsfPage(task, `${W}px`));
    await page.goto(`${lsUrl}/?shot=${s.name}-check`);
    const drawn = await drawnBrushes(page, s.results.length);
    const sameSize = drawn.stage[0] === W && drawn.stage[1] === H;
    check(`${s.name}: LSF draws the image at its natural size`, sameSize, JSON.stringify(drawn.stage));
    const got = drawn.counts.map((c) => c.pixels);
    check(`${s.name}: ${want.length} brush(es), LSF's drawn pixels = our masks'`,
      got.length === want.length && got.every((n, i) => n === want[i]),
      `ours ${JSON.stringify(want)}, drawn by LSF ${JSON.stringify(got)}`);
    // and the same pixels: LSF's layer bitmap against our decoded mask, pixel for pixel
    const differing = drawn.counts.map((c, i) => {
      const bits = Buffer.from(c.bits, 'base64');
      if (!sameSize || !masks[i]) return -1;
      let d = 0;
      for (let p = 0; p < W * H; p++) if (((bits[p >> 3] >> (7 - (p & 7))) & 1) !== masks[i][p]) d++;
      return d;
    });
    check(`${s.name}: LSF's drawn brush = our mask on every pixel`, differing.every((d) => d === 0),
      `differing pixels per brush ${JSON.stringify(differing)}`);
    // 2. the screenshot, with the README's configuration as is
    await page.setViewportSize(shotSize);
    pages.set(s.name, lsfPage(task, null));
    await page.goto(`${lsUrl}/?shot=${s.name}`);
    await drawnBrushes(page, s.results.length);
    await page.waitForTimeout(500);
    const file = path.join(outDir, `${s.name}.png`);
    await page.screenshot({ path: file });
    shrink(file);
    console.log(`screenshot: ${path.relative(root, file)} (${fs.statSync(file).size} bytes)`);
  }

  // X-AnyLabeling cannot run here (a desktop Qt application): its protocol's answer, the
  // polygons of POST /v1/predict for a rectangle mark, drawn as SVG by a page of ours
  const box = [px(rectangle.value.x, W), px(rectangle.value.y, H),
    px(rectangle.value.x + rectangle.value.width, W), px(rectangle.value.y + rectangle.value.height, H)];
  const xr = await fetch(`${ts.base}/v1/predict`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Token: ts.token }, // as its client sends
    body: JSON.stringify({
      model: 'tinysam', image: 'data:image/jpeg;base64,' + fs.readFileSync(imageFile).toString('base64'),
      params: { marks: [{ type: 'rectangle', data: box }], epsilon_factor: 0.001,
        conf_threshold: 0, iou_threshold: 0 },
    }),
  });
  const xa = await xr.json();
  const shapes = xa?.data?.shapes ?? [];
  check('X-AnyLabeling /v1/predict answers polygons', xr.status === 200 && xa.success === true &&
    shapes.length > 0 && shapes.every((sh) => sh.shape_type === 'polygon'),
    `HTTP ${xr.status}, ${shapes.length} shapes`);
  // the same polygons as `tinysam segment --format polygons` for that box, vertex for vertex
  const polyDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tinysam-shots-'));
  const cliPoly = JSON.parse(execFileSync(bin, ['segment', '--model', model, '--image', imageFile,
    '--box', box.join(','), '--format', 'polygons', '--out-dir', polyDir],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })).segmentation;
  fs.rmSync(polyDir, { recursive: true, force: true });
  const flat = shapes.map((sh) => sh.points.flat().join(','));
  check('its polygons = `tinysam segment --format polygons`\'s', flat.length === cliPoly.length &&
    flat.every((f, i) => f === cliPoly[i].join(',')), `${flat.length} and ${cliPoly.length} polygons`);
  const nVert = shapes.reduce((a, sh) => a + sh.points.length, 0);
  pages.set('xany', `<!doctype html><html><head><meta charset="utf-8"><style>
body { margin: 0; font: 14px sans-serif; } p { margin: 6px 10px; }
polygon { fill: rgba(255, 214, 0, 0.35); stroke: #ffd600; stroke-width: 1; }
rect { fill: none; stroke: #00e5ff; stroke-width: 2; }</style></head><body>
<p>POST /v1/predict (X-AnyLabeling's remote-server protocol), a rectangle mark: ${shapes.length}
polygons, ${nVert} vertices, epsilon_factor 0.001. Drawn as SVG by a page of ours, not by
X-AnyLabeling; random-weight test model.</p>
<svg width="${W}" height="${H}" viewBox="0 0 ${W} ${H}"><image href="${lsUrl}/img/picture1.jpg" width="${W}" height="${H}"/>
${shapes.map((sh) => `<polygon points="${sh.points.map((q) => q.join(',')).join(' ')}"/>`).join('\n')}
<rect x="${box[0]}" y="${box[1]}" width="${box[2] - box[0]}" height="${box[3] - box[1]}"/></svg></body></html>`);
  await page.setViewportSize({ width: W, height: H + 60 });
  await page.goto(`${lsUrl}/?shot=xany`);
  await page.waitForFunction(() => document.querySelector('svg image')?.getBBox().width > 0);
  await page.waitForTimeout(300);
  const xfile = path.join(outDir, 'xanylabeling_polygons.png');
  await page.screenshot({ path: xfile, fullPage: true });
  shrink(xfile);
  console.log(`screenshot: ${path.relative(root, xfile)} (${fs.statSync(xfile).size} bytes)`);
  check('no page errors', errors.length === 0, errors.join(' | '));
} finally {
  await browser.close();
  ts.proc.removeAllListeners('exit');
  ts.proc.kill('SIGTERM');
  lsServer.close();
}
console.log(failures ? `${failures} check(s) failed` : 'all checks passed');
process.exit(failures ? 1 : 0);
