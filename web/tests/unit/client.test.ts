import { afterEach, describe, expect, it, vi } from 'vitest';
import { ApiError, NetworkError, configureClient, encodePath, request, url } from '../../src/lib/api/client';

afterEach(() => vi.unstubAllGlobals());

function hooks() {
  const calls = { unauthorized: 0, reachable: [] as boolean[] };
  configureClient({
    token: () => 'tok',
    unauthorized: () => void calls.unauthorized++,
    reachable: (ok) => void calls.reachable.push(ok),
  });
  return calls;
}

describe('api client', () => {
  it('turns a problem+json answer into a typed error with its title, detail and wait', async () => {
    const calls = hooks();
    vi.stubGlobal('fetch', async () =>
      new Response(JSON.stringify({ type: 'urn:coderun:problem:too-many', title: 'Too Many Requests', status: 429, detail: 'five runs are active' }), {
        status: 429,
        headers: { 'content-type': 'application/problem+json', 'retry-after': '10' },
      }),
    );
    const e = (await request('POST', '/tasks/x/runs').catch((e) => e)) as ApiError;
    expect(e).toBeInstanceOf(ApiError);
    expect(e.status).toBe(429);
    expect(e.problem.detail).toBe('five runs are active');
    expect(e.retryAfter).toBe(10);
    expect(calls.reachable).toEqual([true]);
  });

  it('a 401 ends the session, except on the login form', async () => {
    const calls = hooks();
    vi.stubGlobal('fetch', async () => new Response('{"title":"Unauthorized","status":401}', { status: 401 }));
    await request('GET', '/me').catch(() => {});
    expect(calls.unauthorized).toBe(1);
    await request('POST', '/auth/login', { anonymous: true }).catch(() => {});
    expect(calls.unauthorized).toBe(1);
  });

  it('an unreachable server is a network error and reported as such', async () => {
    const calls = hooks();
    vi.stubGlobal('fetch', async () => {
      throw new TypeError('Failed to fetch');
    });
    await expect(request('GET', '/me')).rejects.toBeInstanceOf(NetworkError);
    expect(calls.reachable).toEqual([false]);
  });

  it('sends the bearer token and JSON', async () => {
    hooks();
    let seen: RequestInit | undefined;
    vi.stubGlobal('fetch', async (_u: string, init: RequestInit) => {
      seen = init;
      return new Response('{"ok":true}', { status: 200 });
    });
    expect(await request('POST', '/tasks', { json: { name: 'a' } })).toEqual({ ok: true });
    expect((seen!.headers as Record<string, string>).authorization).toBe('Bearer tok');
    expect(seen!.body).toBe('{"name":"a"}');
  });

  it('builds URLs with only the set query parameters and encodes file paths per segment', () => {
    expect(url('/tasks', { page: 2, q: '', owner_id: null })).toBe('/api/v1/tasks?page=2');
    expect(encodePath('src/my file#1.py')).toBe('src/my%20file%231.py');
    expect(encodePath('bad\\name.py')).toBe('bad%5Cname.py');
  });
});
