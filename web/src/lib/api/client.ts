// The one way the app talks to the API: same-origin `fetch` with the session's bearer token,
// problem+json answers turned into `ApiError`s a component can show next to what caused them,
// and failures to reach the server turned into `NetworkError`s the connection banner follows.

/** An RFC 9457 problem document as the API sends it. */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail?: string;
}

/** The server answered with an error status. */
export class ApiError extends Error {
  readonly status: number;
  readonly problem: Problem;
  /** Seconds to wait, from `Retry-After` (429). */
  readonly retryAfter: number | null;

  constructor(problem: Problem, retryAfter: number | null = null) {
    super(problem.detail ? `${problem.title}: ${problem.detail}` : problem.title);
    this.name = 'ApiError';
    this.status = problem.status;
    this.problem = problem;
    this.retryAfter = retryAfter;
  }
}

/** The server could not be reached (down, network lost). */
export class NetworkError extends Error {
  constructor(cause: unknown) {
    super('The server cannot be reached.');
    this.name = 'NetworkError';
    this.cause = cause;
  }
}

/** What the client needs from the rest of the app; set once at start-up. */
export interface ClientHooks {
  token(): string | null;
  /** A request carrying a token was answered 401: the session is over. */
  unauthorized(): void;
  /** Every request reports whether the server could be reached. */
  reachable(ok: boolean): void;
}

let hooks: ClientHooks = { token: () => null, unauthorized: () => {}, reachable: () => {} };

export function configureClient(h: ClientHooks): void {
  hooks = h;
}

/** Reads a problem from any error response, inventing one when the body is not a problem. */
export async function problemOf(response: Response): Promise<ApiError> {
  let problem: Problem = { type: 'about:blank', title: response.statusText || 'Error', status: response.status };
  try {
    const text = await response.text();
    const body = JSON.parse(text);
    if (body && typeof body.title === 'string') problem = { ...problem, ...body, status: response.status };
  } catch {
    // Not JSON: keep the status line.
  }
  const retry = response.headers.get('retry-after');
  const seconds = retry !== null && /^\d+$/.test(retry) ? Number(retry) : null;
  return new ApiError(problem, seconds);
}

export interface RequestOptions {
  query?: Record<string, string | number | boolean | undefined | null>;
  json?: unknown;
  /** A raw body (file contents). */
  body?: BodyInit;
  contentType?: string;
  headers?: Record<string, string>;
  signal?: AbortSignal;
  /** Do not treat a 401 as the end of the session (the login form). */
  anonymous?: boolean;
}

export function url(path: string, query?: RequestOptions['query']): string {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query ?? {})) {
    if (v !== undefined && v !== null && v !== '') params.set(k, String(v));
  }
  const qs = params.toString();
  return `/api/v1${path}${qs ? `?${qs}` : ''}`;
}

/** Sends one request and returns the raw successful response. */
export async function send(method: string, path: string, options: RequestOptions = {}): Promise<Response> {
  const headers: Record<string, string> = { ...options.headers };
  const token = hooks.token();
  if (token && !options.anonymous) headers.authorization = `Bearer ${token}`;
  let body = options.body;
  if (options.json !== undefined) {
    headers['content-type'] = 'application/json';
    body = JSON.stringify(options.json);
  } else if (options.contentType) {
    headers['content-type'] = options.contentType;
  }
  let response: Response;
  try {
    response = await fetch(url(path, options.query), { method, headers, body, signal: options.signal });
  } catch (e) {
    if ((e as Error)?.name === 'AbortError') throw e;
    hooks.reachable(false);
    throw new NetworkError(e);
  }
  // A gateway answering for a stopped server counts as unreachable too.
  if (response.status === 502 || response.status === 503 || response.status === 504) {
    hooks.reachable(false);
    throw new NetworkError(new Error(`HTTP ${response.status}`));
  }
  hooks.reachable(true);
  if (response.ok) return response;
  const error = await problemOf(response);
  if (error.status === 401 && !options.anonymous) hooks.unauthorized();
  throw error;
}

/** A JSON request whose answer is JSON (or nothing, for 204). */
export async function request<T>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
  const response = await send(method, path, options);
  if (response.status === 204) return undefined as T;
  return (await response.json()) as T;
}

/** Encodes a task file path for a URL, one segment at a time (slashes stay separators). */
export function encodePath(path: string): string {
  return path.split('/').map(encodeURIComponent).join('/');
}
