// Follows a run's log through the API's server-sent events route. The route needs the bearer
// token, which the browser's `EventSource` cannot send, so this reads the same stream with
// `fetch` and does what `EventSource` would: parse the events, and on a dropped connection
// reconnect with `Last-Event-ID` so the log resumes after the last line it has.

import { createParser } from 'eventsource-parser';
import { send, ApiError } from './client';

/** The `end` event's data. */
export interface LogEnd {
  status: string;
  reason: string | null;
  exit_code: number | null;
}

export interface LogStreamHandlers {
  /** New lines, in order; `last` is the number of the last of them. */
  lines(lines: string[], last: number): void;
  end(end: LogEnd): void;
  /** The stream is down and will be retried (true), or is up again (false). */
  reconnecting?(down: boolean): void;
  /** A refusal that retrying cannot cure (404, 403). */
  failed?(error: ApiError): void;
}

export interface LogStreamOptions {
  /** Resume after this line (0: from the start). */
  after?: number;
  /** Delay before reconnecting, by attempt number. */
  backoff?: (attempt: number) => number;
}

const defaultBackoff = (attempt: number) => Math.min(500 * 2 ** attempt, 4000);

/** Starts following; the returned function stops it. */
export function followLog(runId: string, handlers: LogStreamHandlers, options: LogStreamOptions = {}): () => void {
  const controller = new AbortController();
  let last = options.after ?? 0;
  let attempt = 0;
  let ended = false;
  const backoff = options.backoff ?? defaultBackoff;

  const once = async () => {
    const headers: Record<string, string> = { accept: 'text/event-stream' };
    if (last > 0) headers['last-event-id'] = String(last);
    const response = await send('GET', `/runs/${runId}/log/stream`, { headers, signal: controller.signal });
    if (attempt > 0) handlers.reconnecting?.(false);
    attempt = 0;
    let batch: string[] = [];
    const flush = () => {
      if (batch.length) {
        handlers.lines(batch, last);
        batch = [];
      }
    };
    const parser = createParser({
      onEvent(event) {
        if (event.event === 'line') {
          const n = Number(event.id);
          // A line at or before the last one is a repeat after a reconnect.
          if (Number.isFinite(n) && n <= last) return;
          last = Number.isFinite(n) ? n : last + 1;
          batch.push(event.data);
        } else if (event.event === 'end') {
          flush();
          ended = true;
          handlers.end(JSON.parse(event.data) as LogEnd);
        }
      },
    });
    const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parser.feed(value);
      flush();
    }
  };

  void (async () => {
    while (!ended && !controller.signal.aborted) {
      try {
        await once();
        if (ended) return;
      } catch (e) {
        if (controller.signal.aborted) return;
        if (e instanceof ApiError && e.status !== 429) {
          handlers.failed?.(e);
          return;
        }
      }
      // The stream closed without its end, or failed to connect: try again after a pause.
      if (attempt === 0) handlers.reconnecting?.(true);
      await new Promise((r) => setTimeout(r, backoff(attempt)));
      attempt += 1;
    }
  })();

  return () => controller.abort();
}
