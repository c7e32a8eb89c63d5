import { afterEach, describe, expect, it, vi } from 'vitest';
import { configureClient } from '../../src/lib/api/client';
import { followLog, type LogEnd } from '../../src/lib/api/logStream';

afterEach(() => vi.unstubAllGlobals());

function sse(body: string): Response {
  return new Response(new Blob([body]).stream(), { status: 200, headers: { 'content-type': 'text/event-stream' } });
}

describe('log stream', () => {
  it('reads line events, resumes after the last line when the stream drops, and stops at the end', async () => {
    configureClient({ token: () => 't', unauthorized: () => {}, reachable: () => {} });
    const seen: (string | null)[] = [];
    const answers = [
      // The first connection drops after two lines (one of them empty).
      sse('event: line\nid: 1\ndata: first\n\nevent: line\nid: 2\ndata\n\n'),
      // The server resumes after line 2; a repeated line is ignored.
      sse('event: line\nid: 2\ndata: repeat\n\nevent: line\nid: 3\ndata: third\n\nevent: end\ndata: {"status":"succeeded","reason":null,"exit_code":0}\n\n'),
    ];
    vi.stubGlobal('fetch', async (_url: string, init: RequestInit) => {
      seen.push((init.headers as Record<string, string>)['last-event-id'] ?? null);
      return answers.shift()!;
    });
    const lines: string[] = [];
    const downs: boolean[] = [];
    const end = await new Promise<LogEnd>((ok) => {
      followLog('run-1', { lines: (l) => lines.push(...l), end: ok, reconnecting: (d) => downs.push(d) }, { backoff: () => 1 });
    });
    expect(lines).toEqual(['first', '', 'third']);
    expect(seen).toEqual([null, '2']);
    expect(end).toEqual({ status: 'succeeded', reason: null, exit_code: 0 });
    expect(downs).toEqual([true, false]);
  });

  it('gives up on a refusal that retrying cannot cure', async () => {
    configureClient({ token: () => 't', unauthorized: () => {}, reachable: () => {} });
    vi.stubGlobal('fetch', async () => new Response('{"title":"Not Found","status":404}', { status: 404 }));
    const status = await new Promise<number>((ok) => {
      followLog('run-x', { lines: () => {}, end: () => {}, failed: (e) => ok(e.status) }, { backoff: () => 1 });
    });
    expect(status).toBe(404);
  });
});
