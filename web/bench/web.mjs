// `just bench --suite web`: the web app's figures, measured in headless Chromium (Debian's)
// against a running stack that serves the app (the local stack by default):
//   - cold load of a task workspace with 50 files until the editor is editable;
//   - Run clicked → first log line on screen, next to the API's own submit → first line;
//   - a 1 MiB log (20,000 lines) streamed into the view: the longest main-thread task.
// Options: --base-url URL (http://127.0.0.1:8080), --user NAME, --password PW (demo/demo),
// --repeat N (5).
import { chromium } from '@playwright/test';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    'base-url': { type: 'string', default: 'http://127.0.0.1:8080' },
    user: { type: 'string', default: 'demo' },
    password: { type: 'string', default: 'demo' },
    repeat: { type: 'string', default: '5' },
  },
});
const base = values['base-url'];
const repeat = Number(values.repeat);
const api = `${base}/api/v1`;

async function call(method, path, token, body, raw = false) {
  const headers = { authorization: `Bearer ${token}` };
  if (body !== undefined) headers['content-type'] = raw ? 'text/plain' : 'application/json';
  const r = await fetch(`${api}${path}`, { method, headers, body: body === undefined ? undefined : raw ? body : JSON.stringify(body) });
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${await r.text()}`);
  return r.status === 204 ? null : r.headers.get('content-type')?.includes('json') ? r.json() : r.text();
}

const login = await (await fetch(`${api}/auth/login`, {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ username: values.user, password: values.password }),
})).json();
if (!login.token) throw new Error(`cannot log in as ${values.user}: ${JSON.stringify(login)}`);
const token = login.token;
const session = JSON.stringify({ token, expires_at: login.expires_at, user: login.user });

async function task(name, files) {
  const t = await call('POST', '/tasks', token, { name: `bench-web ${name} ${Date.now().toString(36)}`, language: 'python' });
  const upsert = Object.entries(files).map(([path, content]) => ({ path, content }));
  if (upsert.length) await call('POST', `/tasks/${t.id}/files:batch`, token, { upsert, delete: [] });
  return t;
}

async function waitIdle(taskId) {
  for (;;) {
    const page = await call('GET', `/tasks/${taskId}/runs?per_page=5`, token);
    if (!page.items.some((r) => ['queued', 'dispatched', 'pending', 'running', 'stopping'].includes(r.status))) return;
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** The API alone: submit, then read the log stream until its first line. */
async function apiFirstLine(taskId) {
  const t0 = performance.now();
  const run = await call('POST', `/tasks/${taskId}/runs`, token, {});
  const r = await fetch(`${api}/runs/${run.id}/log/stream`, { headers: { authorization: `Bearer ${token}` } });
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let text = '';
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    text += value;
    if (text.includes('event: line')) break;
  }
  const ms = performance.now() - t0;
  await reader.cancel();
  await waitIdle(taskId);
  return ms;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const fmt = (ms) => `${ms.toFixed(0)} ms`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

async function freshPage() {
  const context = await browser.newContext({ viewport: { width: 1400, height: 860 } });
  await context.addInitScript((s) => localStorage.setItem('coderun.session', s), session);
  return { context, page: await context.newPage() };
}

try {
  // 1. Cold load of a workspace with 50 files.
  const files = { 'main.py': 'print("hello")\n' };
  for (let i = 0; i < 49; i++) files[`pkg${i % 5}/module_${i}.py`] = `def f${i}(x):\n    return x * ${i}\n`.repeat(20);
  const big = await task('50 files', files);
  const loads = [];
  for (let i = 0; i < repeat; i++) {
    const { context, page } = await freshPage();
    const t0 = Date.now();
    await page.goto(`${base}/tasks/${big.id}`);
    await page.locator('.cm-content[contenteditable="true"]').waitFor();
    loads.push(Date.now() - t0);
    await context.close();
  }
  console.log(`web: cold load of a workspace with 50 files to an editable editor: median ${fmt(median(loads))} (${loads.map(fmt).join(', ')})`);

  // 2. Run clicked → first line on screen, and the API's submit → first line.
  const hello = await task('hello', { 'main.py': 'print("hello, world")\n' });
  const ui = [];
  const raw = [];
  const { context, page } = await freshPage();
  await page.goto(`${base}/tasks/${hello.id}`);
  await page.locator('.cm-content').waitFor();
  for (let i = 0; i < repeat; i++) {
    raw.push(await apiFirstLine(hello.id));
    const before = new URL(page.url()).search;
    const t0 = await page.evaluate(() => performance.now());
    await page.getByRole('button', { name: 'Run', exact: true }).click();
    // The view drops the previous run's lines when the new run is shown (and its id enters
    // the address), so the first line after that is the new run's.
    const t1 = await (
      await page.waitForFunction(
        (prev) => location.search !== prev && location.search.includes('run=') && document.querySelector('[role="log"] .line') && performance.now(),
        before,
        { polling: 'raf', timeout: 60_000 },
      )
    ).jsonValue();
    const ms = t1 - t0;
    ui.push(ms);
    await page.locator('.end-title', { hasText: 'Succeeded' }).waitFor({ timeout: 60_000 });
    await waitIdle(hello.id);
  }
  await context.close();
  console.log(`web: Run clicked → first log line on screen: median ${fmt(median(ui))} (${ui.map(fmt).join(', ')})`);
  console.log(`web: API submit → first log line (same stack, same program): median ${fmt(median(raw))} (${raw.map(fmt).join(', ')})`);

  // 3. A 1 MiB log streamed into the view.
  const flood = await task('flood', { 'main.py': 'import sys\nfor i in range(20000):\n    sys.stdout.write(f"{i:06d} " + "x" * 44 + "\\n")\n' });
  {
    const { context, page } = await freshPage();
    await page.goto(`${base}/tasks/${flood.id}`);
    await page.locator('.cm-content').waitFor();
    await page.evaluate(() => {
      window.__long = [];
      new PerformanceObserver((list) => {
        for (const e of list.getEntries()) window.__long.push(e.duration);
      }).observe({ type: 'longtask', buffered: false });
    });
    const t0 = Date.now();
    await page.getByRole('button', { name: 'Run', exact: true }).click();
    await page.locator('.end-title').filter({ hasText: /Succeeded|Log too long|Failed/ }).waitFor({ timeout: 120_000 });
    await page.waitForFunction(() => Number(document.querySelector('[role="log"]')?.getAttribute('data-lines')) >= 19000, null, { timeout: 60_000 });
    const lines = await page.locator('[role="log"]').getAttribute('data-lines');
    const long = await page.evaluate(() => window.__long);
    const rendered = await page.locator('[role="log"] .line').count();
    console.log(`web: 1 MiB log (${lines} lines) streamed in ${fmt(Date.now() - t0)}: longest main-thread task ${long.length ? fmt(Math.max(...long)) : 'none over 50 ms'}, ${long.length} tasks over 50 ms, ${rendered} line elements in the DOM`);
    await context.close();
  }
} finally {
  await browser.close();
}
