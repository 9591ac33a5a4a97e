// serve_process.mjs - starts `tinysam serve --port 0` and waits for the one JSON line it prints
// first ({"url": ..., "port": ...}); shared by the browser test (e2e.mjs) and the labelling
// screenshots (tools/labelling_screenshots), which differ only in the options they pass.
import { spawn } from 'node:child_process';

// Resolves to { proc, info, base } (base: http://127.0.0.1:PORT, no trailing slash); rejects
// when the binary cannot start or exits before it prints its address.
export function startServe(bin, args) {
  return new Promise((resolve, reject) => {
    const proc = spawn(bin, ['serve', '--port', '0', ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    proc.on('error', reject);
    proc.on('exit', (code) => reject(new Error(`tinysam serve exited early (${code})`)));
    proc.stdout.on('data', (d) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl < 0) return;
      const info = JSON.parse(out.slice(0, nl));
      resolve({ proc, info, base: `http://127.0.0.1:${info.port}` });
    });
  });
}
