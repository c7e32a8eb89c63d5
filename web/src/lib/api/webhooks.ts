// The status callbacks API (issue 11): the caller's endpoints (the secret comes only in the
// create answer), their deliveries with every attempt, and resending one. There is no
// `GET /webhooks/{id}` and no `PATCH`: an endpoint is found in the list, and is never changed.
import { ApiError, request, send } from './client';
import type { CreatedWebhook, Delivery, Page, Webhook, WebhookEvent } from './types';

export const WEBHOOKS_PER_PAGE = 20;
export const DELIVERIES_PER_PAGE = 20;
/** The largest page the API gives (`per_page` 1 to 100). */
const MOST_PER_PAGE = 100;

export function listWebhooks(page: number): Promise<Page<Webhook>> {
  return request<Page<Webhook>>('GET', '/webhooks', { query: { page, per_page: WEBHOOKS_PER_PAGE } });
}

/** Registers an endpoint; the answer holds its secret, which no later answer shows. */
export function createWebhook(url: string, events: WebhookEvent[]): Promise<CreatedWebhook> {
  return request<CreatedWebhook>('POST', '/webhooks', { json: { url, events } });
}

export function deleteWebhook(id: string): Promise<void> {
  return request<void>('DELETE', `/webhooks/${encodeURIComponent(id)}`);
}

/** One endpoint of the caller, looked up in the list; a 404 `ApiError` when it is not there. */
export async function findWebhook(id: string): Promise<Webhook> {
  for (let page = 1; ; page++) {
    const r = await request<Page<Webhook>>('GET', '/webhooks', { query: { page, per_page: MOST_PER_PAGE } });
    const found = r.items.find((w) => w.id === id);
    if (found) return found;
    if (r.items.length === 0 || page * MOST_PER_PAGE >= r.total) break;
  }
  throw new ApiError({ type: 'about:blank', title: 'Not Found', status: 404, detail: 'endpoint not found' });
}

export function listDeliveries(id: string, page: number): Promise<Page<Delivery>> {
  return request<Page<Delivery>>('GET', `/webhooks/${encodeURIComponent(id)}/deliveries`, { query: { page, per_page: DELIVERIES_PER_PAGE } });
}

/** Sends a delivery again now, with a fresh schedule of retries (202; 409 when disabled). */
export async function resendDelivery(id: string, deliveryId: string): Promise<void> {
  // 202 with no body: `send`, not `request` (which reads JSON from anything but 204).
  await send('POST', `/webhooks/${encodeURIComponent(id)}/deliveries/${encodeURIComponent(deliveryId)}/resend`);
}
