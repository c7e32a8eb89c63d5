// Starts the stack the end-to-end tests run against, unless E2E_BASE_URL names one.
//
// `coderun-e2e-stack --web-dir dist` prints one JSON line with its base URL and users, then
// takes `api-stop` / `api-start` on stdin (answered `ok`) and exits when stdin closes. The
// tests run in other processes, so a small control server on loopback relays those commands:
// E2E_CONTROL_URL/api-stop and /api-start.
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { createInterface } from 'node:readline';
import type { AddressInfo } from 'node:net';

export default async function globalSetup(): Promise<() => Promise<void>> {
  if (process.env.E2E_BASE_URL) return async () => {};
  const bin = process.env.CODERUN_E2E_STACK;
  if (!bin) throw new Error('set CODERUN_E2E_STACK (the coderun-e2e-stack binary) or E2E_BASE_URL');
  const child = spawn(bin, ['--web-dir', process.env.E2E_WEB_DIR ?? 'dist'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout! });
  const waiting: ((line: string) => void)[] = [];
  const queued: string[] = [];
  lines.on('line', (line) => {
    const w = waiting.shift();
    if (w) w(line);
    else queued.push(line);
  });
  const nextLine = (ms: number) =>
    new Promise<string>((ok, fail) => {
      const q = queued.shift();
      if (q !== undefined) return ok(q);
      const t = setTimeout(() => fail(new Error(`coderun-e2e-stack said nothing for ${ms} ms`)), ms);
      waiting.push((l) => {
        clearTimeout(t);
        ok(l);
      });
    });
  const exited = new Promise<never>((_, fail) => child.on('exit', (code) => fail(new Error(`coderun-e2e-stack exited (${code})`))));
  exited.catch(() => {});
  const info = JSON.parse(await Promise.race([nextLine(300_000), exited])) as { base_url: string; users: Record<string, string> };
  process.env.E2E_BASE_URL = info.base_url;
  process.env.E2E_USERS = JSON.stringify(info.users);

  // One command at a time.
  let chain = Promise.resolve();
  const control = createServer((req, res) => {
    const command = (req.url ?? '').slice(1);
    if (command !== 'api-stop' && command !== 'api-start') {
      res.writeHead(404).end();
      return;
    }
    chain = chain.then(async () => {
      child.stdin!.write(`${command}\n`);
      const answer = await nextLine(120_000).catch((e) => String(e));
      res.writeHead(answer === 'ok' ? 200 : 500).end(answer);
    });
  });
  await new Promise<void>((ok) => control.listen(0, '127.0.0.1', ok));
  process.env.E2E_CONTROL_URL = `http://127.0.0.1:${(control.address() as AddressInfo).port}`;

  return async () => {
    control.close();
    child.stdin!.end();
    await new Promise<void>((ok) => {
      const t = setTimeout(() => {
        child.kill('SIGKILL');
        ok();
      }, 60_000);
      child.on('exit', () => {
        clearTimeout(t);
        ok();
      });
    });
  };
}
