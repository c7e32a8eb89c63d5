// What a run's status means to a person: active or not, the end state in plain words, and
// the phase timeline with durations.

export const ACTIVE = ['queued', 'dispatched', 'pending', 'running', 'stopping'] as const;
export const STATUSES = ['queued', 'dispatched', 'pending', 'running', 'succeeded', 'failed', 'stopping', 'stopped', 'canceled'] as const;

export function isActive(status: string): boolean {
  return (ACTIVE as readonly string[]).includes(status);
}

export interface EndInput {
  status: string;
  reason?: string | null;
  exit_code?: number | null;
  spec?: { memory_mib?: number; wall_seconds?: number } | null;
}

/** One sentence for how a run ended (or where it is), e.g. "Out of memory". */
export function endState(run: EndInput): { title: string; detail: string; tone: 'ok' | 'bad' | 'neutral' } {
  const mem = run.spec?.memory_mib;
  const wall = run.spec?.wall_seconds;
  switch (run.reason) {
    case 'oom_killed':
      return { title: 'Out of memory', detail: mem ? `The program used more than its ${mem} MiB and was killed.` : 'The program used more memory than allowed and was killed.', tone: 'bad' };
    case 'deadline_exceeded':
      return { title: 'Time limit', detail: wall ? `The program ran longer than ${wall} s and was stopped.` : 'The program ran too long and was stopped.', tone: 'bad' };
    case 'output_limit_exceeded':
      return { title: 'Log too long', detail: 'The program printed more than the log may hold; the log was cut and the run ended.', tone: 'bad' };
    case 'stopped_by_user':
      return { title: 'Stopped', detail: 'Stopped on request.', tone: 'neutral' };
    case 'image_pull_failed':
      return { title: 'Could not start', detail: "The language's image could not be pulled.", tone: 'bad' };
    case 'launch_failed':
      return { title: 'Could not start', detail: 'The run could not be launched.', tone: 'bad' };
    case 'evicted':
      return { title: 'Evicted', detail: 'The machine running the program needed its room back.', tone: 'bad' };
    case 'executor_lost':
      return { title: 'Lost', detail: 'The machine running the program was lost.', tone: 'bad' };
    case 'dead_lettered':
      return { title: 'Could not start', detail: 'No worker could take the run.', tone: 'bad' };
  }
  switch (run.status) {
    case 'succeeded':
      return { title: 'Succeeded', detail: `Exit code ${run.exit_code ?? 0}.`, tone: 'ok' };
    case 'failed':
      return { title: 'Failed', detail: run.exit_code != null ? `Exit code ${run.exit_code}.` : 'The run failed.', tone: 'bad' };
    case 'stopped':
      return { title: 'Stopped', detail: 'Stopped on request.', tone: 'neutral' };
    case 'canceled':
      return { title: 'Canceled', detail: 'Canceled before it started.', tone: 'neutral' };
    case 'stopping':
      return { title: 'Stopping…', detail: '', tone: 'neutral' };
    case 'running':
      return { title: 'Running…', detail: '', tone: 'neutral' };
    default:
      return { title: 'Waiting to start…', detail: `Status: ${run.status}.`, tone: 'neutral' };
  }
}

export interface PhaseEvent {
  phase: string;
  at: string;
}

/** Each phase with how long it lasted (until the next one, or until `now` for the last). */
export function timeline(events: PhaseEvent[], now: number, finished: boolean): { phase: string; at: string; ms: number | null }[] {
  return events.map((e, i) => {
    const start = Date.parse(e.at);
    const next = events[i + 1];
    if (next) return { phase: e.phase, at: e.at, ms: Date.parse(next.at) - start };
    return { phase: e.phase, at: e.at, ms: finished ? null : Math.max(0, now - start) };
  });
}

/** "850 ms", "4.2 s", "2 min 5 s". */
export function duration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)} min ${s % 60} s`;
}

/** "1.2 KB". */
export function size(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}
