// The run shown in the workspace: submit, stop, retry, its phases and status (polled while
// it is active), its live log (streamed, resumed after the last line on a reconnect) and its
// outputs; and the task's run history.

import { ApiError, request } from '../api/client';
import { followLog } from '../api/logStream';
import type { OutputPage, Page, Run, RunDetail } from '../api/types';
import { isActive } from '../logic/runs';
import { saveBlob } from '../logic/download';

/** Why a Run click did not start a run, with what the person can do about it. */
export interface SubmitProblem {
  error: ApiError;
  /** The active run that blocks this one (409). */
  activeRunId?: string;
}

class RunStore {
  run = $state.raw<RunDetail | null>(null);
  /** The log lines; the array is replaced by a new one only when a run is opened. */
  lines: string[] = [];
  /** Bumped whenever `lines` grows, so views re-render. */
  version = $state(0);
  ended = $state(false);
  reconnecting = $state(false);
  outputs = $state.raw<OutputPage['items']>([]);
  submitting = $state(false);
  submitProblem = $state<SubmitProblem | null>(null);
  actionError = $state<ApiError | null>(null);
  streamError = $state<ApiError | null>(null);
  /** When Run was clicked (performance.now()), and when its first line arrived. */
  clickedAt = 0;
  firstLineAt = $state(0);

  #stopStream: (() => void) | null = null;
  #poll: ReturnType<typeof setTimeout> | null = null;

  get active(): boolean {
    return !!this.run && isActive(this.run.status);
  }

  async submit(taskId: string, body: { spec?: string; datasets?: string[]; command?: string }): Promise<boolean> {
    this.submitProblem = null;
    this.submitting = true;
    this.clickedAt = performance.now();
    try {
      const run = await request<RunDetail>('POST', `/tasks/${taskId}/runs`, { json: body });
      this.show(run);
      return true;
    } catch (e) {
      if (!(e instanceof ApiError)) throw e;
      const problem: SubmitProblem = { error: e };
      if (e.status === 409) {
        const page = await request<Page<Run>>('GET', `/tasks/${taskId}/runs`, { query: { per_page: 20 } }).catch(() => null);
        problem.activeRunId = page?.items.find((r) => isActive(r.status))?.id;
      }
      this.submitProblem = problem;
      return false;
    } finally {
      this.submitting = false;
    }
  }

  async open(runId: string): Promise<void> {
    this.show(await request<RunDetail>('GET', `/runs/${runId}`));
  }

  /** Starts showing a run: its log from the first line, its status until it ends. */
  show(run: RunDetail): void {
    this.close();
    this.run = run;
    this.lines = [];
    this.version += 1;
    this.ended = false;
    this.outputs = [];
    this.firstLineAt = 0;
    this.#stopStream = followLog(run.id, {
      lines: (lines) => {
        if (!this.firstLineAt) {
          this.firstLineAt = performance.now();
          // The program is printing, so the status polled a moment ago ("queued") is behind:
          // a short run would show its output under "Waiting to start…" until the next poll.
          void this.#refresh();
        }
        for (const l of lines) this.lines.push(l);
        this.version += 1;
      },
      end: () => {
        this.ended = true;
        void this.#refresh();
      },
      reconnecting: (down) => {
        this.reconnecting = down;
      },
      failed: (e) => {
        this.streamError = e;
      },
    });
    this.#schedulePoll();
  }

  close(): void {
    this.#stopStream?.();
    this.#stopStream = null;
    if (this.#poll) clearTimeout(this.#poll);
    this.#poll = null;
    this.run = null;
    this.reconnecting = false;
    this.streamError = null;
    this.actionError = null;
    this.submitProblem = null;
  }

  #schedulePoll(): void {
    if (this.#poll) clearTimeout(this.#poll);
    this.#poll = setTimeout(() => void this.#refresh(), 1000);
  }

  async #refresh(): Promise<void> {
    const id = this.run?.id;
    if (!id) return;
    try {
      const run = await request<RunDetail>('GET', `/runs/${id}`);
      if (this.run?.id !== id) return;
      this.run = run;
      if (!isActive(run.status)) {
        const page = await request<OutputPage>('GET', `/runs/${id}/outputs`, { query: { per_page: 100 } });
        if (this.run?.id === id) this.outputs = page.items;
        // The status is final; the log stream ends by itself.
        if (this.ended) return;
      }
    } catch {
      // A failed poll is retried; the connection banner tells the person.
    }
    if (this.run?.id === id) this.#schedulePoll();
  }

  async stop(): Promise<void> {
    if (!this.run) return;
    this.actionError = null;
    try {
      this.run = { ...this.run, ...(await request<RunDetail>('POST', `/runs/${this.run.id}/stop`)) };
    } catch (e) {
      if (e instanceof ApiError) this.actionError = e;
      else throw e;
    }
  }

  async retry(): Promise<void> {
    if (!this.run) return;
    this.actionError = null;
    try {
      this.show(await request<RunDetail>('POST', `/runs/${this.run.id}/retry`));
    } catch (e) {
      if (e instanceof ApiError) this.actionError = e;
      else throw e;
    }
  }

  /** The whole log as a file, once the run has ended (its stream then holds every line). */
  downloadLog(): void {
    const run = this.run;
    if (!run || !this.ended) return;
    const text = this.lines.join('\n') + (this.lines.length ? '\n' : '');
    saveBlob(new Blob([text], { type: 'text/plain' }), `log-${run.id}.txt`);
  }
}

export const runs = new RunStore();

class History {
  items = $state.raw<Run[]>([]);
  total = $state(0);
  page = $state(1);
  status = $state('');
  perPage = 10;

  async load(taskId: string): Promise<void> {
    const r = await request<Page<Run>>('GET', `/tasks/${taskId}/runs`, {
      query: { page: this.page, per_page: this.perPage, status: this.status },
    });
    this.items = r.items;
    this.total = r.total;
  }

  get pages(): number {
    return Math.max(1, Math.ceil(this.total / this.perPage));
  }
}

export const history = new History();
