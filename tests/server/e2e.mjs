// e2e.mjs - `tinysam serve` end to end in a real headless browser (Debian's chromium driven
// by playwright-core): open the page, upload a fixture image, click a point, drag a box,
// run everything; each time the mask painted on the page must agree with the CLI's mask for
// the same prompt on >= 99% of the pixels.
//
//   cd tests/server && npm ci --ignore-scripts && node e2e.mjs [--screenshot ../../docs/serve.png]
//
// Environment: TINYSAM_BIN (default $BUILD/tinysam, BUILD=build), TINYSAM_FIXTURES (default
// ../shared/fixtures from the repository root), CHROMIUM (default /usr/bin/chromium).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startServe } from './serve_process.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const bin = path.resolve(root, process.env.TINYSAM_BIN || `${process.env.BUILD || 'build'}/tinysam`);
const fixtures = path.resolve(root, process.env.TINYSAM_FIXTURES || '../shared/fixtures');
const model = path.join(fixtures, 'models/tinysam_vit_t_random.pth');
const image = path.join(fixtures, 'images/picture1.jpg');
const shotArg = process.argv.indexOf('--screenshot');
const screenshot = shotArg > 0 ? path.resolve(process.argv[shotArg + 1]) : null;
const MIN_AGREEMENT = 0.99;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tinysam-e2e-'));

let passed = 0, failed = 0;
function check(name, ok, detail) {
  console.log(`${ok ? 'ok' : 'FAIL'} ${name}${detail ? ': ' + detail : ''}`);
  if (ok) passed++; else failed++;
}

// ---------------------------------------------------------------- a minimal PNG reader

// Decodes the non-interlaced PNGs the CLI writes (8-bit grey or RGB(A), and 1-bit grey for
// masks, unpacked to 0/255); returns {width, height, channels, data}.
function readPng(file) {
  const buf = fs.readFileSync(file);
  if (buf.readUInt32BE(0) !== 0x89504e47) throw new Error(`${file}: not a PNG`);
  let pos = 8, width = 0, height = 0, channels = 0, depth = 8;
  const idat = [];
  while (pos < buf.length) {
    const len = buf.readUInt32BE(pos), type = buf.toString('latin1', pos + 4, pos + 8);
    const body = buf.subarray(pos + 8, pos + 8 + len);
    if (type === 'IHDR') {
      width = body.readUInt32BE(0);
      height = body.readUInt32BE(4);
      const color = body[9], interlace = body[12];
      depth = body[8];
      channels = { 0: 1, 2: 3, 4: 2, 6: 4 }[color];
      if (!(depth === 8 || (depth === 1 && color === 0)) || !channels || interlace)
        throw new Error(`${file}: unsupported PNG layout`);
    } else if (type === 'IDAT') {
      idat.push(body);
    }
    pos += 12 + len;
  }
  const raw = zlib.inflateSync(Buffer.concat(idat));
  // filters work on bytes; a 1-bit row is ceil(width / 8) bytes, its "pixel" one byte
  const stride = depth === 1 ? (width + 7) >> 3 : width * channels;
  const out = Buffer.alloc(stride * height);
  for (let y = 0; y < height; y++) {
    const f = raw[y * (stride + 1)], src = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? out[y * stride + x - channels] : 0;
      const b = y > 0 ? out[(y - 1) * stride + x] : 0;
      const c = x >= channels && y > 0 ? out[(y - 1) * stride + x - channels] : 0;
      let pred = 0;
      if (f === 1) pred = a;
      else if (f === 2) pred = b;
      else if (f === 3) pred = (a + b) >> 1;
      else if (f === 4) {
        const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
        pred = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      out[y * stride + x] = (src[x] + pred) & 255;
    }
  }
  if (depth === 1) { // most significant bit first
    const px = Buffer.alloc(width * height);
    for (let y = 0; y < height; y++)
      for (let x = 0; x < width; x++)
        px[y * width + x] = (out[y * stride + (x >> 3)] >> (7 - (x & 7))) & 1 ? 255 : 0;
    return { width, height, channels, data: px };
  }
  return { width, height, channels, data: out };
}

function pngMask(file) {
  const p = readPng(file);
  const m = new Uint8Array(p.width * p.height);
  for (let i = 0; i < m.length; i++) m[i] = p.data[i * p.channels] > 127 ? 1 : 0;
  return { width: p.width, height: p.height, mask: m };
}

function agreement(a, b) {
  let same = 0, onA = 0, onB = 0;
  for (let i = 0; i < a.length; i++) {
    same += a[i] === b[i];
    onA += a[i];
    onB += b[i];
  }
  return { frac: same / a.length, onA, onB };
}

// ---------------------------------------------------------------- the server

async function startServer() {
  // with a token, as on a shared machine: the page is opened by the printed URL (its
  // ?token= sets the cookie that the page's own requests then carry)
  const { proc, info, base } = await startServe(bin, ['--model', model, '--token', 'auto']);
  return { proc, url: info.url, base: `${base}/` };
}

function cli(args) {
  return execFileSync(bin, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
}

// The selected mask as the page paints it: mask-layer pixels with alpha > 0.
async function pageMask(page) {
  const b64 = await page.evaluate(() => {
    const c = document.getElementById('mask-layer');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    const m = new Uint8Array(c.width * c.height);
    for (let i = 0; i < m.length; i++) m[i] = d[4 * i + 3] > 0 ? 1 : 0;
    let s = '';
    for (let i = 0; i < m.length; i += 8192) s += String.fromCharCode.apply(null, m.subarray(i, i + 8192));
    return btoa(s);
  });
  return new Uint8Array(Buffer.from(b64, 'base64'));
}

async function idle(page) {
  await page.waitForFunction(() => document.body.dataset.busy === '0', null, { timeout: 120000 });
}

// Page coordinates of image pixel (x, y).
async function toPage(page, x, y) {
  const r = await page.locator('#prompt-layer').boundingBox();
  const { w, h } = await page.evaluate(() => ({ w: window.tinysam.width, h: window.tinysam.height }));
  return [r.x + ((x + 0.5) * r.width) / w, r.y + ((y + 0.5) * r.height) / h];
}

async function main() {
  if (!fs.existsSync(model) || !fs.existsSync(image)) {
    console.log(`SKIP e2e: fixtures missing under ${fixtures}`);
    return 0;
  }
  const server = await startServer();
  server.proc.removeAllListeners('exit');
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on('pageerror', (e) => check('no page errors', false, e.message));
    // without the token the server refuses the page; a foreign page's request is refused
    const bare = await page.goto(server.base);
    check('page without the token refused', bare.status() === 401, `status ${bare.status()}`);
    const foreign = await page.evaluate(async (base) => {
      try {
        const r = await fetch(base + 'api/images', { method: 'POST', body: 'x', headers: { 'Content-Type': 'text/plain' } });
        return r.status;
      } catch (e) { return 'blocked'; }
    }, server.base);
    check('a request without the token refused', foreign === 401 || foreign === 'blocked', String(foreign));
    const opened = await page.goto(server.url);
    check('page opened by the printed URL', opened.status() === 200, `status ${opened.status()}`);
    check('page title', (await page.title()).includes('tinysam'));

    // upload: shown at once, encoded, then ready
    await page.setInputFiles('#file', image);
    await page.waitForSelector('body[data-ready="1"]', { timeout: 120000 });
    const size = await page.evaluate(() => [window.tinysam.width, window.tinysam.height]);
    check('image size', size[0] === 769 && size[1] === 770, `${size}`);

    // 1. a positive point
    const [px, py] = await toPage(page, 380, 300);
    await page.mouse.click(px, py);
    await page.waitForFunction(() => window.tinysam.result !== null, null, { timeout: 60000 });
    await idle(page);
    let req = await page.evaluate(() => window.tinysam.lastRequest);
    let sel = await page.evaluate(() => window.tinysam.selected);
    check('point request', req.points.length === 1 && req.labels[0] === 1 && !req.box &&
      Math.abs(req.points[0][0] - 380.5) < 1 && Math.abs(req.points[0][1] - 300.5) < 1,
      JSON.stringify(req));
    let dir = path.join(tmp, 'point');
    let out = JSON.parse(cli(['segment', '--model', model, '--image', image, '--point',
      `${req.points[0][0]},${req.points[0][1]},1`, '--out-dir', dir]));
    check('point: page selects the CLI best mask', out.best === sel, `cli ${out.best} page ${sel}`);
    let ref = pngMask(path.join(dir, `mask_${sel}.png`));
    let got = await pageMask(page);
    let a = agreement(got, ref.mask);
    check('point: page mask = CLI mask', a.frac >= MIN_AGREEMENT && a.onB > 0,
      `agreement ${(100 * a.frac).toFixed(3)}% (page ${a.onA} px, CLI ${a.onB} px)`);
    // a second, negative point refines with the previous logits (exercises the API path)
    const [nx, ny] = await toPage(page, 600, 650);
    await page.mouse.click(nx, ny, { button: 'right' });
    await page.waitForFunction(() => window.tinysam.history.length === 2, null, { timeout: 60000 });
    await idle(page);
    req = await page.evaluate(() => window.tinysam.lastRequest);
    check('negative point with previous mask', req.points.length === 2 && req.labels[1] === 0 &&
      req.previous && req.previous.handle > 0, JSON.stringify(req));
    if (screenshot) {
      fs.mkdirSync(path.dirname(screenshot), { recursive: true });
      await page.screenshot({ path: screenshot });
      console.log(`screenshot: ${screenshot}`);
    }
    await page.click('#undo');
    check('undo', (await page.evaluate(() => window.tinysam.prompts.points.length)) === 1);

    // 2. a box, after clear
    await page.click('#clear');
    const [bx0, by0] = await toPage(page, 150, 120);
    const [bx1, by1] = await toPage(page, 560, 600);
    await page.mouse.move(bx0, by0);
    await page.mouse.down();
    await page.mouse.move((bx0 + bx1) / 2, (by0 + by1) / 2, { steps: 5 });
    await page.mouse.move(bx1, by1, { steps: 5 });
    await page.mouse.up();
    await page.waitForFunction(() => window.tinysam.result && window.tinysam.lastRequest.box, null, { timeout: 60000 });
    await idle(page);
    req = await page.evaluate(() => window.tinysam.lastRequest);
    sel = await page.evaluate(() => window.tinysam.selected);
    check('box request', req.box && req.points.length === 0 && !req.previous, JSON.stringify(req));
    dir = path.join(tmp, 'box');
    out = JSON.parse(cli(['segment', '--model', model, '--image', image, '--box', req.box.join(','),
      '--out-dir', dir]));
    check('box: page selects the CLI best mask', out.best === sel, `cli ${out.best} page ${sel}`);
    ref = pngMask(path.join(dir, `mask_${sel}.png`));
    got = await pageMask(page);
    a = agreement(got, ref.mask);
    check('box: page mask = CLI mask', a.frac >= MIN_AGREEMENT && a.onB > 0,
      `agreement ${(100 * a.frac).toFixed(3)}% (page ${a.onA} px, CLI ${a.onB} px)`);

    // 3. everything (options small enough for random weights to give masks quickly)
    await page.selectOption('#ev-mode', 'grid');
    await page.fill('#ev-pps', '4');
    await page.fill('#ev-iou', '-10');
    await page.fill('#ev-stab', '0');
    await page.click('#everything');
    await page.waitForSelector('body[data-everything]', { timeout: 300000 });
    await idle(page);
    const n = Number(await page.evaluate(() => document.body.dataset.everything));
    dir = path.join(tmp, 'everything');
    out = JSON.parse(cli(['everything', '--model', model, '--image', image, '--out', path.join(tmp, 'ev.json'),
      '--mode', 'grid', '--points-per-side', '4', '--pred-iou-thresh', '-10',
      '--stability-score-thresh', '0', '--quiet', '--format', 'png-dir', dir]));
    check('everything: mask count = CLI', n === out.masks && n > 0, `page ${n} CLI ${out.masks}`);
    const union = new Uint8Array(size[0] * size[1]);
    for (let i = 0; i < out.masks; i++) {
      const m = pngMask(path.join(dir, `mask_${String(i).padStart(4, '0')}.png`)).mask;
      for (let k = 0; k < union.length; k++) union[k] |= m[k];
    }
    got = await pageMask(page);
    a = agreement(got, union);
    check('everything: painted pixels = union of CLI masks', a.frac >= MIN_AGREEMENT && a.onB > 0,
      `agreement ${(100 * a.frac).toFixed(3)}% (page ${a.onA} px, CLI ${a.onB} px)`);
    const records = await page.evaluate(() => window.tinysam.everything.records);
    const cliRecords = JSON.parse(fs.readFileSync(path.join(tmp, 'ev.json'), 'utf8'));
    check('everything: records = CLI --out', JSON.stringify(records) === JSON.stringify(cliRecords));

    // downloads produce files
    const [dl] = await Promise.all([page.waitForEvent('download'), page.click('#dl-rle')]);
    const dlPath = path.join(tmp, 'dl.json');
    await dl.saveAs(dlPath);
    check('download COCO RLE JSON', JSON.parse(fs.readFileSync(dlPath, 'utf8')).length === n);

    // drag and drop another image onto the stage: it replaces the first one, prompts cleared
    const image2 = path.join(fixtures, 'images/shapes.png');
    const oldId = await page.evaluate(() => window.tinysam.id);
    await page.evaluate(async (b64) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const dt = new DataTransfer();
      dt.items.add(new File([bytes], 'shapes.png', { type: 'image/png' }));
      const stage = document.getElementById('stage');
      for (const type of ['dragover', 'drop'])
        stage.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
    }, fs.readFileSync(image2).toString('base64'));
    await page.waitForFunction((old) => window.tinysam.id && window.tinysam.id !== old, oldId,
      { timeout: 120000 });
    await idle(page);
    const dropped = await page.evaluate(() => [window.tinysam.width, window.tinysam.height,
      window.tinysam.name, window.tinysam.prompts.points.length, window.tinysam.everything]);
    check('drag and drop: the dropped image replaces the first', dropped[0] === 640 &&
      dropped[1] === 480 && dropped[2] === 'shapes' && dropped[3] === 0 && dropped[4] === null,
      JSON.stringify(dropped));
    const [qx, qy] = await toPage(page, 320, 240);
    await page.mouse.click(qx, qy);
    await page.waitForFunction(() => window.tinysam.result !== null, null, { timeout: 60000 });
    await idle(page);
    req = await page.evaluate(() => window.tinysam.lastRequest);
    check('drag and drop: prompts go to the dropped image', req.points.length === 1 &&
      Math.abs(req.points[0][0] - 320) <= 2 && Math.abs(req.points[0][1] - 240) <= 2,
      JSON.stringify(req));
  } finally {
    await browser.close();
    // clean shutdown on SIGTERM
    const exited = new Promise((res) => server.proc.on('exit', (code, sig) => res({ code, sig })));
    server.proc.kill('SIGTERM');
    const r = await Promise.race([exited, new Promise((res) => setTimeout(() => res(null), 15000))]);
    check('server stops on SIGTERM with status 0', r && r.code === 0, JSON.stringify(r));
    if (!r) server.proc.kill('SIGKILL');
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  console.log(`# ${passed} ${failed} 0`);
  console.log(`${passed} passed, ${failed} failed`);
  return failed ? 1 : 0;
}

main().then((rc) => process.exit(rc), (e) => {
  console.error(`FAIL e2e: ${e.stack || e}`);
  process.exit(1);
});
