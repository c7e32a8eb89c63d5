// Who is logged in. The token lives in localStorage until it expires, so a reload keeps the
// session; a 401 anywhere ends it and sends the person to the login page, which brings them
// back where they were.

import { request, configureClient } from '../api/client';
import type { LoginResponse, Me } from '../api/types';
import { connection } from './connection.svelte';
import { router } from './router.svelte';
import { loginPath } from '../logic/routes';

const KEY = 'coderun.session';

interface Stored {
  token: string;
  expires_at: string;
  user: Me;
}

function load(): Stored | null {
  try {
    const s = JSON.parse(localStorage.getItem(KEY) ?? 'null') as Stored | null;
    if (s && Date.parse(s.expires_at) > Date.now()) return s;
  } catch {
    // A damaged entry is no session.
  }
  localStorage.removeItem(KEY);
  return null;
}

class Session {
  #stored = $state<Stored | null>(load());
  #timer: ReturnType<typeof setTimeout> | null = null;

  get user(): Me | null {
    return this.#stored?.user ?? null;
  }
  get token(): string | null {
    return this.#stored?.token ?? null;
  }
  get staff(): boolean {
    return this.user?.role === 'teacher' || this.user?.role === 'admin';
  }
  get admin(): boolean {
    return this.user?.role === 'admin';
  }

  constructor() {
    this.#arm();
  }

  async login(username: string, password: string): Promise<void> {
    const r = await request<LoginResponse>('POST', '/auth/login', { json: { username, password }, anonymous: true });
    this.#stored = { token: r.token, expires_at: r.expires_at, user: r.user as Me };
    localStorage.setItem(KEY, JSON.stringify(this.#stored));
    this.#arm();
  }

  logout(): void {
    this.#stored = null;
    localStorage.removeItem(KEY);
    router.go('/login');
  }

  /** The token was refused or ran out: log in again, then come back here. */
  expire(): void {
    if (!this.#stored) return;
    this.#stored = null;
    localStorage.removeItem(KEY);
    const here = window.location.pathname + window.location.search;
    router.go(here.startsWith('/login') ? '/login' : loginPath(here), { replace: true });
  }

  #arm(): void {
    if (this.#timer) clearTimeout(this.#timer);
    if (!this.#stored) return;
    const left = Date.parse(this.#stored.expires_at) - Date.now();
    // setTimeout cannot wait longer than about 24.8 days.
    this.#timer = setTimeout(() => this.expire(), Math.min(Math.max(left, 0), 2 ** 31 - 1));
  }
}

export const session = new Session();

configureClient({
  token: () => session.token,
  unauthorized: () => session.expire(),
  reachable: (ok) => connection.report(ok),
});
