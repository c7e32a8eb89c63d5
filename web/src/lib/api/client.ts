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

export interface UploadResult {
  status: number;
  /** The `ETag` header, when the server lets the page read it (S3 parts). */
  etag: string | null;
  text: string;
}

/**
 * Sends a body with upload progress (`fetch` reports none): to the API (`api: true`, with the
 * token, a problem answer becoming an `ApiError`) or to a presigned storage URL (no token).
 * A 413 from the API is returned, not thrown, so the caller can take another way.
 */
export function upload(
  method: 'PUT' | 'POST',
  target: string,
  body: Blob,
  options: { api: boolean; onprogress?: (loaded: number) => void; signal?: AbortSignal; contentType?: string },
): Promise<UploadResult> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, target);
    if (options.api) {
      const token = hooks.token();
      if (token) xhr.setRequestHeader('authorization', `Bearer ${token}`);
    }
    if (options.contentType) xhr.setRequestHeader('content-type', options.contentType);
    xhr.upload.onprogress = (e) => options.onprogress?.(e.loaded);
    const abort = () => xhr.abort();
    options.signal?.addEventListener('abort', abort, { once: true });
    const done = () => options.signal?.removeEventListener('abort', abort);
    xhr.onabort = () => {
      done();
      reject(new DOMException('The upload was canceled.', 'AbortError'));
    };
    xhr.onerror = () => {
      done();
      if (options.api) hooks.reachable(false);
      reject(new NetworkError(new Error(`${method} ${target} failed`)));
    };
    xhr.onload = () => {
      done();
      const result: UploadResult = { status: xhr.status, etag: xhr.getResponseHeader('etag'), text: xhr.responseText };
      if (!options.api) {
        if (xhr.status >= 200 && xhr.status < 300) resolve(result);
        else reject(new ApiError({ type: 'about:blank', title: 'The storage refused a part of the file', status: xhr.status, detail: xhr.statusText || undefined }));
        return;
      }
      if (xhr.status === 502 || xhr.status === 503 || xhr.status === 504) {
        hooks.reachable(false);
        reject(new NetworkError(new Error(`HTTP ${xhr.status}`)));
        return;
      }
      hooks.reachable(true);
      if ((xhr.status >= 200 && xhr.status < 300) || xhr.status === 413) {
        resolve(result);
        return;
      }
      const headers = new Headers();
      const retry = xhr.getResponseHeader('retry-after');
      if (retry) headers.set('retry-after', retry);
      problemOf(new Response(xhr.responseText, { status: xhr.status, statusText: xhr.statusText, headers })).then((error) => {
        if (error.status === 401) hooks.unauthorized();
        reject(error);
      }, reject);
    };
    xhr.send(body);
  });
}
