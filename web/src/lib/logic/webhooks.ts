// Status callbacks as a person reads them: the events an endpoint may ask for, in words; a
// delivery's status and the outcome of its attempts; and the registration form checked for
// what the page can see (the server judges the URL itself and answers 422 saying why).
import type { Delivery, DeliveryAttempt, Webhook, WebhookEvent } from '../api/types';

/** The events an endpoint may ask for, in the contract's order, with what each one means. */
export const WEBHOOK_EVENTS: readonly { type: WebhookEvent; label: string; help: string }[] = [
  { type: 'run.status', label: 'Run status', help: 'a run of one of your tasks changed status (queued, running, finished …)' },
  { type: 'pipeline_run.status', label: 'Pipeline run status', help: 'a run of one of your pipelines changed status' },
  { type: 'approval.requested', label: 'Approval requested', help: 'a stage of one of your pipeline runs waits for approval' },
];

/** An event type in words; an unknown one as it is. */
export function eventLabel(type: string): string {
  return WEBHOOK_EVENTS.find((e) => e.type === type)?.label ?? type;
}

/** The events of an endpoint in words, in the contract's order. */
export function eventsLabel(types: readonly string[]): string {
  const known = WEBHOOK_EVENTS.filter((e) => types.includes(e.type)).map((e) => e.label);
  const other = types.filter((t) => !WEBHOOK_EVENTS.some((e) => e.type === t));
  return [...known, ...other].join(', ');
}

export type DeliveryTone = 'ok' | 'bad' | 'active' | 'neutral';

/** The colour class of a delivery status: `pending` (attempts remain), `succeeded`, `failed`. */
export function deliveryTone(status: string): DeliveryTone {
  if (status === 'succeeded') return 'ok';
  if (status === 'failed') return 'bad';
  if (status === 'pending') return 'active';
  return 'neutral';
}

/** A delivery that may still change: the view keeps refreshing while one is listed. */
export function isDeliveryActive(d: Pick<Delivery, 'status'>): boolean {
  return d.status === 'pending';
}

/** What one attempt came to: the status code the endpoint answered, the error, or both. */
export function attemptOutcome(a: Pick<DeliveryAttempt, 'status_code' | 'error'>): string {
  const code = a.status_code ?? null;
  const error = a.error?.trim() || null;
  if (code !== null && error) return `HTTP ${code}: ${error}`;
  if (code !== null) return `HTTP ${code}`;
  return error ?? 'no answer';
}

/** The latest attempt's outcome, or that none was made yet. */
export function lastOutcome(d: Pick<Delivery, 'attempts'>): string {
  const last = d.attempts.at(-1);
  return last ? attemptOutcome(last) : 'not tried yet';
}

/** What a delivery's subject is, by its event type: a run, or a pipeline run. */
export function subjectKind(type: string): string {
  if (type === 'run.status') return 'run';
  if (type === 'pipeline_run.status' || type === 'approval.requested') return 'pipeline run';
  return 'subject';
}

/** "1 attempt", "3 attempts". */
export function attemptsLabel(n: number): string {
  return `${n} ${n === 1 ? 'attempt' : 'attempts'}`;
}

/** An endpoint's state in words: active, or disabled with the reason the server gave. */
export function endpointState(w: Pick<Webhook, 'disabled_at' | 'disabled_reason'>): { disabled: boolean; text: string } {
  if (!w.disabled_at) return { disabled: false, text: 'Active' };
  const reason = w.disabled_reason?.trim();
  if (!reason) return { disabled: true, text: 'Disabled' };
  // The server's reason reads "disabled after 20 failed attempts …": not "Disabled: disabled …".
  if (/^disabled\b/i.test(reason)) return { disabled: true, text: reason[0].toUpperCase() + reason.slice(1) };
  return { disabled: true, text: `Disabled: ${reason}` };
}

/**
 * The registration form, checked for what the page can tell: a URL given as http(s), at least
 * one event. Returns the request body, or what to fix. Addresses and the rest stay the server's.
 */
export function checkRegistration(url: string, events: readonly string[]): { ok: true; url: string; events: WebhookEvent[] } | { ok: false; error: string } {
  const u = url.trim();
  if (!u) return { ok: false, error: 'Enter the URL that should receive the callbacks.' };
  if (!/^https?:\/\//i.test(u)) return { ok: false, error: 'The URL must start with http:// or https://.' };
  const chosen = WEBHOOK_EVENTS.filter((e) => events.includes(e.type)).map((e) => e.type);
  if (chosen.length === 0) return { ok: false, error: 'Choose at least one event.' };
  return { ok: true, url: u, events: chosen };
}
