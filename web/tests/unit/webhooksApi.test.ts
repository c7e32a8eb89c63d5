import { afterEach, describe, expect, it, vi } from 'vitest';
import { ApiError, configureClient } from '../../src/lib/api/client';
import { findWebhook, resendDelivery } from '../../src/lib/api/webhooks';

afterEach(() => vi.unstubAllGlobals());

const endpoint = (id: string) => ({ id, url: `https://example.org/${id}`, events: ['run.status'], created_at: '2026-01-01T00:00:00Z' });

/** A fake `GET /webhooks` holding `ids`, paged as the API pages; records every URL asked. */
function listing(ids: string[]) {
  const asked: string[] = [];
  vi.stubGlobal('fetch', async (input: string) => {
    asked.push(input);
    const q = new URL(input, 'http://app').searchParams;
    const page = Number(q.get('page'));
    const per = Number(q.get('per_page'));
    const items = ids.slice((page - 1) * per, page * per).map(endpoint);
    return new Response(JSON.stringify({ items, page, per_page: per, total: ids.length }), { status: 200 });
  });
  return asked;
}

describe('webhooks api', () => {
  configureClient({ token: () => 'tok', unauthorized: () => {}, reachable: () => {} });

  it('finds an endpoint in the list (there is no GET by id), page after page', async () => {
    const ids = Array.from({ length: 150 }, (_, i) => `w${i}`);
    const asked = listing(ids);
    expect((await findWebhook('w120')).url).toBe('https://example.org/w120');
    expect(asked).toEqual(['/api/v1/webhooks?page=1&per_page=100', '/api/v1/webhooks?page=2&per_page=100']);
  });

  it('answers 404 for an endpoint that is not the caller’s, after the last page', async () => {
    const asked = listing(['a', 'b']);
    const e = (await findWebhook('c').catch((e) => e)) as ApiError;
    expect(e).toBeInstanceOf(ApiError);
    expect(e.status).toBe(404);
    expect(asked).toHaveLength(1);
  });

  it('resends with a 202 and no body', async () => {
    const seen: { url: string; method: string }[] = [];
    vi.stubGlobal('fetch', async (url: string, init: RequestInit) => {
      seen.push({ url, method: init.method! });
      return new Response(null, { status: 202 });
    });
    await expect(resendDelivery('w1', 'd1')).resolves.toBeUndefined();
    expect(seen).toEqual([{ url: '/api/v1/webhooks/w1/deliveries/d1/resend', method: 'POST' }]);
  });
});
