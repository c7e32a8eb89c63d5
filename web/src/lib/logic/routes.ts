// The app's addresses. Every view has a real path, so reloads and shared links land on it.

export type Route =
  | { name: 'login'; next: string }
  | { name: 'tasks' }
  | { name: 'task'; id: string; run: string | null }
  | { name: 'users' }
  | { name: 'user'; id: string; username: string | null }
  | { name: 'datasets' }
  | { name: 'dataset'; dataset: string; version: string | null }
  | { name: 'pipelines'; owner: string | null; username: string | null }
  | { name: 'pipeline'; id: string; status: string }
  | { name: 'pipelineRun'; id: string }
  | { name: 'callbacks' }
  | { name: 'callback'; id: string; page: number }
  | { name: 'notfound' };

export function parseRoute(pathname: string, search: string): Route {
  const params = new URLSearchParams(search);
  const parts = pathname.split('/').filter(Boolean).map(decodeURIComponent);
  if (parts.length === 0) return { name: 'tasks' };
  if (parts[0] === 'login' && parts.length === 1) {
    const next = params.get('next') ?? '/';
    // Only same-app paths: never send someone to another site after logging in.
    return { name: 'login', next: next.startsWith('/') && !next.startsWith('//') ? next : '/' };
  }
  if (parts[0] === 'tasks' && parts.length === 2) return { name: 'task', id: parts[1], run: params.get('run') };
  if (parts[0] === 'users' && parts.length === 1) return { name: 'users' };
  if (parts[0] === 'users' && parts.length === 2) return { name: 'user', id: parts[1], username: params.get('name') };
  if (parts[0] === 'datasets' && parts.length === 1) return { name: 'datasets' };
  if (parts[0] === 'datasets' && parts.length === 2) return { name: 'dataset', dataset: parts[1], version: params.get('version') };
  if (parts[0] === 'pipelines' && parts.length === 1) return { name: 'pipelines', owner: params.get('owner'), username: params.get('name') };
  if (parts[0] === 'pipelines' && parts.length === 2) return { name: 'pipeline', id: parts[1], status: params.get('status') ?? '' };
  if (parts[0] === 'pipeline-runs' && parts.length === 2) return { name: 'pipelineRun', id: parts[1] };
  if (parts[0] === 'callbacks' && parts.length === 1) return { name: 'callbacks' };
  if (parts[0] === 'callbacks' && parts.length === 2) return { name: 'callback', id: parts[1], page: pageParam(params.get('page')) };
  return { name: 'notfound' };
}

/** A `?page=` value: a whole number from 1, anything else the first page. */
export function pageParam(raw: string | null): number {
  const n = raw !== null && /^\d{1,6}$/.test(raw) ? Number(raw) : 1;
  return n >= 1 ? n : 1;
}

export function loginPath(next: string): string {
  return next === '/' ? '/login' : `/login?next=${encodeURIComponent(next)}`;
}
