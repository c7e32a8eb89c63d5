// One task open for editing: its file tree, the open tabs and their contents. It never loses
// an edit: every change is written to the browser's storage at once, saved to the server after
// a pause (or on Ctrl/Cmd-S), retried when the server comes back, and only then dropped from
// the browser's storage.

import { ApiError, NetworkError, encodePath, request, send } from '../api/client';
import type { TaskDetail } from '../api/types';
import { Drafts } from '../logic/drafts';
import { saveBlob } from '../logic/download';
import { basename, dirname, filePaths, join, rebase, withPendingFolders, type TreeNode } from '../logic/paths';
import { connection } from './connection.svelte';
import { session } from './session.svelte';

/** How long typing must pause before an autosave. */
export const AUTOSAVE_MS = 800;
/** How often a save that failed for want of a server is tried again. */
const RETRY_MS = 2000;

export type SaveState = 'saved' | 'dirty' | 'saving' | 'error';

export class Doc {
  readonly taskId: string;
  path = $state('');
  content = $state('');
  /** What the server holds. */
  saved = '';
  state = $state<SaveState>('saved');
  error = $state<string | null>(null);
  loaded = $state(false);
  timer: ReturnType<typeof setTimeout> | null = null;
  inFlight: Promise<void> | null = null;

  constructor(taskId: string, path: string) {
    this.taskId = taskId;
    this.path = path;
  }
}

const drafts = new Drafts(localStorage);

class Workspace {
  task = $state.raw<TaskDetail | null>(null);
  loadError = $state<ApiError | null>(null);
  pendingFolders = $state<string[]>([]);
  tabs = $state<Doc[]>([]);
  active = $state<Doc | null>(null);

  readOnly = $derived(!!this.task && this.task.owner_id !== session.user?.id);
  tree: TreeNode[] = $derived(withPendingFolders((this.task?.files ?? []) as TreeNode[], this.pendingFolders));
  unsaved = $derived(this.tabs.some((d) => d.state !== 'saved'));

  constructor() {
    connection.onBack(() => this.#retryFailed());
    setInterval(() => this.#retryFailed(), RETRY_MS);
    window.addEventListener('beforeunload', (e) => {
      if (this.unsaved) e.preventDefault();
    });
  }

  async open(taskId: string): Promise<void> {
    if (this.task?.id === taskId) {
      await this.refresh();
      return;
    }
    this.close();
    try {
      this.task = await request<TaskDetail>('GET', `/tasks/${taskId}`);
    } catch (e) {
      if (e instanceof ApiError) this.loadError = e;
      else throw e;
      return;
    }
    const main = this.task.main_file;
    if (main) await this.openFile(main);
  }

  close(): void {
    for (const d of this.tabs) if (d.timer) clearTimeout(d.timer);
    this.task = null;
    this.loadError = null;
    this.tabs = [];
    this.active = null;
    this.pendingFolders = [];
  }

  async refresh(): Promise<void> {
    if (!this.task) return;
    this.task = await request<TaskDetail>('GET', `/tasks/${this.task.id}`);
    const files = new Set(filePaths(this.task.files as TreeNode[]));
    // A folder that now holds a file is a real one.
    this.pendingFolders = this.pendingFolders.filter((f) => ![...files].some((p) => p.startsWith(`${f}/`)));
  }

  async openFile(path: string): Promise<void> {
    const task = this.task;
    if (!task) return;
    let doc = this.tabs.find((d) => d.path === path);
    if (!doc) {
      doc = new Doc(task.id, path);
      this.tabs = [...this.tabs, doc];
      this.active = doc;
      const r = await send('GET', `/tasks/${task.id}/files/${encodePath(path)}`);
      const text = await r.text();
      doc.saved = text;
      const draft = this.readOnly ? null : drafts.get(task.id, path);
      if (draft !== null && draft !== text) {
        doc.content = draft;
        doc.state = 'dirty';
        this.#schedule(doc, 0);
      } else {
        drafts.drop(task.id, path);
        doc.content = text;
      }
      doc.loaded = true;
    }
    this.active = doc;
  }

  closeTab(doc: Doc): void {
    const i = this.tabs.indexOf(doc);
    if (doc.state !== 'saved') void this.save(doc);
    this.tabs = this.tabs.filter((d) => d !== doc);
    if (this.active === doc) this.active = this.tabs[Math.min(i, this.tabs.length - 1)] ?? null;
  }

  /** The editor changed a document. */
  edit(doc: Doc, content: string): void {
    if (this.readOnly || content === doc.content) return;
    doc.content = content;
    if (content === doc.saved && !doc.inFlight) {
      doc.state = 'saved';
      drafts.drop(doc.taskId, doc.path);
      return;
    }
    drafts.put(doc.taskId, doc.path, content);
    if (doc.state !== 'error') doc.state = 'dirty';
    this.#schedule(doc, AUTOSAVE_MS);
  }

  #schedule(doc: Doc, ms: number): void {
    if (doc.timer) clearTimeout(doc.timer);
    doc.timer = setTimeout(() => void this.save(doc), ms);
  }

  /** Saves one document now; resolves once the server has its current content (or it failed). */
  async save(doc: Doc): Promise<void> {
    if (doc.timer) clearTimeout(doc.timer);
    doc.timer = null;
    if (doc.inFlight) {
      await doc.inFlight;
      if (doc.content === doc.saved) return;
    }
    if (doc.content === doc.saved && doc.state === 'saved') return;
    const content = doc.content;
    doc.state = 'saving';
    doc.inFlight = (async () => {
      try {
        await send('PUT', `/tasks/${doc.taskId}/files/${encodePath(doc.path)}`, {
          body: content,
          contentType: 'text/plain; charset=utf-8',
        });
        doc.saved = content;
        doc.error = null;
        if (doc.content === content) {
          doc.state = 'saved';
          drafts.drop(doc.taskId, doc.path);
        } else {
          doc.state = 'dirty';
          this.#schedule(doc, AUTOSAVE_MS);
        }
      } catch (e) {
        doc.state = 'error';
        doc.error = e instanceof ApiError ? e.message : e instanceof NetworkError ? 'the server cannot be reached' : String(e);
      } finally {
        doc.inFlight = null;
      }
    })();
    await doc.inFlight;
  }

  /** Saves every open document; true when all of them are saved. */
  async flush(): Promise<boolean> {
    await Promise.all(this.tabs.filter((d) => d.state !== 'saved').map((d) => this.save(d)));
    return this.tabs.every((d) => d.state === 'saved');
  }

  #retryFailed(): void {
    if (connection.down) return;
    for (const d of this.tabs) {
      if (d.state === 'error' && !d.inFlight && d.error === 'the server cannot be reached') void this.save(d);
    }
  }

  // ----- the file tree -----

  async createFile(folder: string, name: string): Promise<void> {
    const task = this.task!;
    const path = join(folder, name);
    await send('PUT', `/tasks/${task.id}/files/${encodePath(path)}`, {
      body: '',
      contentType: 'text/plain; charset=utf-8',
    });
    await this.refresh();
    await this.openFile(path);
  }

  createFolder(parent: string, name: string): void {
    const path = join(parent, name);
    if (!this.pendingFolders.includes(path)) this.pendingFolders = [...this.pendingFolders, path];
  }

  async move(from: string, to: string): Promise<void> {
    const task = this.task!;
    const files = filePaths(task.files as TreeNode[]);
    const real = files.some((p) => p === from || p.startsWith(`${from}/`));
    if (real) {
      // Unsaved edits go first, under the old names the server knows.
      await this.flush();
      await request('POST', `/tasks/${task.id}/files:move`, { json: { from, to } });
      drafts.move(task.id, from, to, files);
    }
    for (const d of this.tabs) {
      const p = rebase(d.path, from, to);
      if (p !== null) d.path = p;
    }
    this.pendingFolders = this.pendingFolders.map((f) => rebase(f, from, to) ?? f);
    if (real) await this.refresh();
  }

  async remove(path: string): Promise<void> {
    const task = this.task!;
    const files = filePaths(task.files as TreeNode[]);
    if (files.some((p) => p === path || p.startsWith(`${path}/`))) {
      await send('DELETE', `/tasks/${task.id}/files/${encodePath(path)}`);
    }
    for (const d of this.tabs.filter((d) => rebase(d.path, path, path) !== null)) {
      if (d.timer) clearTimeout(d.timer);
      drafts.drop(task.id, d.path);
      d.state = 'saved';
      this.closeTab(d);
    }
    this.pendingFolders = this.pendingFolders.filter((f) => rebase(f, path, path) === null);
    await this.refresh();
  }

  async setMain(path: string): Promise<void> {
    this.task = await request<TaskDetail>('PATCH', `/tasks/${this.task!.id}`, { json: { main_file: path } });
  }

  async updateTask(patch: { name?: string; description?: string; command?: string | null }): Promise<void> {
    this.task = await request<TaskDetail>('PATCH', `/tasks/${this.task!.id}`, { json: patch });
  }

  /** Uploads dropped files (paths relative to `folder`) in one transaction. */
  async upload(folder: string, files: { path: string; content: string }[]): Promise<void> {
    const task = this.task!;
    await request('POST', `/tasks/${task.id}/files:batch`, {
      json: { upsert: files.map((f) => ({ path: join(folder, f.path), content: f.content })), delete: [] },
    });
    await this.refresh();
  }

  async downloadFile(path: string): Promise<void> {
    const doc = this.tabs.find((d) => d.path === path);
    const text = doc ? doc.content : await (await send('GET', `/tasks/${this.task!.id}/files/${encodePath(path)}`)).text();
    saveBlob(new Blob([text], { type: 'text/plain' }), basename(path));
  }

  async downloadArchive(): Promise<void> {
    const task = this.task!;
    const r = await send('GET', `/tasks/${task.id}/archive`);
    saveBlob(await r.blob(), `${task.name}.zip`);
  }
}

export const workspace = new Workspace();
export { dirname };
