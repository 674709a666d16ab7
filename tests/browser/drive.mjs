// Drives headless Chromium for the Rust browser test (runtimes/cli/tests/browser.rs).
//
// Serves the page, the package (runtimes/pouchdb) and PouchDB's browser build on
// http://127.0.0.1:<free port, or $PEERPOUCH_DRIVE_PORT>/ (a secure
// context, so Chromium offers a plain 127.0.0.1 host candidate), launches /usr/bin/chromium through playwright-core's
// DevTools client (no browser download) with a fresh profile, and takes commands as JSON lines
// on stdin, answering on stdout:
//
//   {"id": 1, "cmd": "open_page", "page": "a"}                      -> {"id": 1, "ok": true}
//   {"id": 2, "cmd": "call", "page": "a", "fn": "join", "args": {}} -> {"id": 2, "ok": <result>}
//   {"id": 3, "cmd": "close_page", "page": "a"}                     -> {"id": 3, "ok": true}
//   {"id": 4, "cmd": "quit"}                                        -> {"id": 4, "ok": true}
//
// Failures answer {"id": N, "err": "..."}. Pages report progress as {"event": ..., "page": ...}
// lines at any time. Logs (and the pages' console) go to stderr. Closing stdin quits.
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const executablePath = process.env.PEERPOUCH_CHROMIUM || '/usr/bin/chromium';
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const log = (...a) => process.stderr.write(`[drive] ${a.join(' ')}\n`);

const types = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript' };
const files = new Map(['page.html', 'peerpouch.js', 'scenarios.js'].map((f) => [f, path.join(here, f)]));
// PouchDB's browser build (npm, pinned in package-lock.json), loaded by page.html as a script.
files.set('vendor/pouchdb.js', path.join(here, 'node_modules/pouchdb/dist/pouchdb.js'));
// The package under test: runtimes/pouchdb/*.js and src/*.js, at the path the page's relative
// imports resolve to.
const pkg = path.join(here, '../../runtimes/pouchdb');
for (const dir of ['', 'src/']) {
  for (const f of fs.readdirSync(path.join(pkg, dir))) {
    if (f.endsWith('.js')) files.set(`runtimes/pouchdb/${dir}${f}`, path.join(pkg, dir, f));
  }
}
const server = http.createServer((req, res) => {
  const name = new URL(req.url, 'http://x').pathname.slice(1);
  const file = files.get(name);
  if (!file) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { 'content-type': types[path.extname(name)], 'cache-control': 'no-store' });
  fs.createReadStream(file).pipe(res);
});
// PEERPOUCH_DRIVE_PORT fixes the port (the page's origin), e.g. for a hub whose CORS allows
// exactly that origin; default: any free port.
await new Promise((r) => server.listen(Number(process.env.PEERPOUCH_DRIVE_PORT || 0), '127.0.0.1', r));
const origin = `http://127.0.0.1:${server.address().port}`;

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'peerpouch-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  chromiumSandbox: false, // --no-sandbox: we run as root in a network namespace
  args: [
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--allow-loopback-in-peer-connection',
    '--use-fake-ui-for-media-stream',
  ],
});
log(`chromium ${context.browser()?.version() ?? '(persistent context)'} up, pages from ${origin}`);

const pages = new Map();
await context.exposeBinding('__report', ({ page }, line) => {
  const name = [...pages].find(([, p]) => p === page)?.[0] ?? null;
  out({ ...JSON.parse(line), page: name });
});

async function openPage(name) {
  const page = await context.newPage();
  page.on('console', (m) => log(`[${name} console] ${m.text()}`));
  page.on('pageerror', (e) => log(`[${name} error] ${e}`));
  await page.goto(`${origin}/page.html`);
  await page.waitForFunction(() => window.scenarios !== undefined);
  pages.set(name, page);
}

async function handle(msg) {
  switch (msg.cmd) {
    case 'open_page':
      await openPage(msg.page);
      return true;
    case 'call': {
      const page = pages.get(msg.page);
      if (!page) throw new Error(`no page ${msg.page}`);
      // The page's stack, not only its message, comes back on failure.
      return page.evaluate(
        async ([fn, args]) => {
          try {
            return await window.scenarios[fn](args);
          } catch (e) {
            throw new Error(`${e?.stack ?? e} ${e && typeof e === 'object' ? JSON.stringify(e) : ''}`);
          }
        },
        [msg.fn, msg.args ?? {}],
      );
    }
    case 'close_page': {
      const page = pages.get(msg.page);
      if (!page) throw new Error(`no page ${msg.page}`);
      pages.delete(msg.page);
      await page.close();
      return true;
    }
    case 'quit':
      await quit();
      return true;
    default:
      throw new Error(`unknown command ${msg.cmd}`);
  }
}

let quitting;
function quit() {
  quitting ??= (async () => {
    await context.close().catch((e) => log('closing chromium:', e));
    server.close();
    fs.rmSync(profile, { recursive: true, force: true });
  })();
  return quitting;
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  let msg;
  try {
    msg = JSON.parse(line);
  } catch {
    log('not a JSON command:', line);
    return;
  }
  handle(msg).then(
    (ok) => out({ id: msg.id, ok }),
    (e) => out({ id: msg.id, err: String(e?.stack ?? e) }),
  );
});
rl.on('close', async () => {
  await quit();
  process.exit(0);
});
