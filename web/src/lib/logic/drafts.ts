// Unsaved editor content kept in the browser's storage until the server has it, so a crash,
// a closed tab or a server outage never loses an edit.

export interface DraftStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

const key = (taskId: string, path: string) => `coderun.draft.${taskId}.${path}`;

export class Drafts {
  constructor(private readonly storage: DraftStorage) {}

  get(taskId: string, path: string): string | null {
    try {
      return this.storage.getItem(key(taskId, path));
    } catch {
      return null;
    }
  }

  /** Keeps `content`; a full storage is not an error (the edit is still in memory). */
  put(taskId: string, path: string, content: string): void {
    try {
      this.storage.setItem(key(taskId, path), content);
    } catch {
      // Quota exceeded or storage disabled.
    }
  }

  drop(taskId: string, path: string): void {
    try {
      this.storage.removeItem(key(taskId, path));
    } catch {
      // Storage disabled.
    }
  }

  /** Moves drafts along with a renamed file or folder. */
  move(taskId: string, from: string, to: string, paths: string[]): void {
    for (const p of paths) {
      const target = p === from ? to : p.startsWith(`${from}/`) ? to + p.slice(from.length) : null;
      if (target === null) continue;
      const content = this.get(taskId, p);
      if (content !== null) {
        this.put(taskId, target, content);
        this.drop(taskId, p);
      }
    }
  }
}
