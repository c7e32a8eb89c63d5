// Shared steps of the end-to-end tests: users, API calls for set-up and checks, logging in
// through the form, axe in light and dark, screenshots, and stopping/starting the API.
import { test as base, expect, request as pwRequest, type APIRequestContext, type Page } from '@playwright/test';
import AxeBuilder from '@axe-core/playwright';
import { mkdirSync } from 'node:fs';
import { randomBytes } from 'node:crypto';

export { expect };

export const baseUrl = () => process.env.E2E_BASE_URL!;

/** Users of the stack: username → password. The launcher makes admin, teacher, alice, bob. */
export function users(): Record<string, string> {
  return JSON.parse(process.env.E2E_USERS ?? '{"admin":"admin","teacher":"teacher","alice":"alice","bob":"bob"}');
}

export const unique = (prefix: string) => `${prefix} ${randomBytes(3).toString('hex')}`;

export class Api {
  constructor(readonly ctx: APIRequestContext, readonly token: string, readonly userId: string) {}

  static async as(username: string): Promise<Api> {
    const ctx = await pwRequest.newContext({ baseURL: baseUrl() });
    const r = await ctx.post('/api/v1/auth/login', { data: { username, password: users()[username] } });
    expect(r.status(), `login as ${username}`).toBe(200);
    const body = await r.json();
    return new Api(ctx, body.token, body.user.id);
  }

  private headers(extra: Record<string, string> = {}) {
    return { authorization: `Bearer ${this.token}`, ...extra };
  }

  async get(path: string) {
    return this.ctx.get(`/api/v1${path}`, { headers: this.headers() });
  }

  async json<T = any>(method: 'GET' | 'POST' | 'PATCH' | 'DELETE', path: string, data?: unknown): Promise<T> {
    const r = await this.ctx.fetch(`/api/v1${path}`, { method, headers: this.headers(), data });
    expect(r.ok(), `${method} ${path}: ${r.status()} ${await r.text()}`).toBeTruthy();
    return r.status() === 204 ? (undefined as T) : r.json();
  }

  async createTask(name: string, files: Record<string, string> = {}): Promise<{ id: string }> {
    const task = await this.json('POST', '/tasks', { name, language: 'python' });
    for (const [path, content] of Object.entries(files)) await this.put(task.id, path, content);
    return task;
  }

  async put(taskId: string, path: string, content: string) {
    const r = await this.ctx.put(`/api/v1/tasks/${taskId}/files/${path}`, {
      headers: this.headers({ 'content-type': 'text/plain' }),
      data: content,
    });
    expect(r.ok(), `PUT ${path}`).toBeTruthy();
  }

  async file(taskId: string, path: string): Promise<{ status: number; text: string }> {
    const r = await this.get(`/tasks/${taskId}/files/${path}`);
    return { status: r.status(), text: await r.text() };
  }

  async paths(taskId: string): Promise<string[]> {
    const task = await this.json('GET', `/tasks/${taskId}`);
    const out: string[] = [];
    const walk = (nodes: any[]) => nodes.forEach((n) => (n.kind === 'file' ? out.push(n.path) : walk(n.children ?? [])));
    walk(task.files);
    return out.sort();
  }

  /** Waits until the task has no active run (so the next test can start one). */
  async settle(taskId: string) {
    await expect
      .poll(async () => (await this.json('GET', `/tasks/${taskId}/runs?per_page=5`)).items.filter((r: any) => ['queued', 'dispatched', 'pending', 'running', 'stopping'].includes(r.status)).length, { timeout: 60_000 })
      .toBe(0);
  }
}

/** Logs in through the form. */
export async function login(page: Page, username: string, next = '/') {
  await page.goto(next);
  await expect(page.getByRole('heading', { name: 'Log in to coderun' })).toBeVisible();
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(users()[username]);
  await page.getByRole('button', { name: 'Log in' }).click();
  await expect(page.getByRole('button', { name: 'Log out' })).toBeVisible();
}

/** Opens a task's workspace and waits until its main file is in the editor. */
export async function openTask(page: Page, taskId: string) {
  await page.goto(`/tasks/${taskId}`);
  await expect(page.locator('.cm-content')).toBeVisible();
}

/** Types into the editor, replacing its content. */
export async function typeCode(page: Page, text: string) {
  await page.locator('.cm-content').click();
  await page.keyboard.press('ControlOrMeta+a');
  await page.keyboard.press('Delete');
  // insertText: no auto-indent or bracket closing in the way.
  await page.keyboard.insertText(text);
}

/** axe in light and dark: no serious or critical finding. */
export async function checkA11y(page: Page, view: string) {
  for (const scheme of ['light', 'dark'] as const) {
    await page.emulateMedia({ colorScheme: scheme });
    const results = await new AxeBuilder({ page }).analyze();
    const bad = results.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
    expect(bad.map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(' ')).slice(0, 3).join(', ')}`), `${view} in ${scheme}`).toEqual([]);
  }
  await page.emulateMedia({ colorScheme: 'light' });
}

export async function screenshot(page: Page, name: string) {
  const dir = 'test-results/screenshots';
  mkdirSync(dir, { recursive: true });
  await page.screenshot({ path: `${dir}/${name}.png` });
}

/** Stops or starts the stack's API server (the database, worker and S3 keep running). */
export async function apiControl(command: 'api-stop' | 'api-start') {
  const url = process.env.E2E_CONTROL_URL;
  if (!url) throw new Error('no E2E_CONTROL_URL: this test needs the stack started by global-setup');
  const r = await fetch(`${url}/${command}`);
  if (!r.ok) throw new Error(`${command}: ${await r.text()}`);
}

export const test = base.extend({
  baseURL: async ({}, use) => use(baseUrl()),
});
