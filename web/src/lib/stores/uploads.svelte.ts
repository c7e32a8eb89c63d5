// The files being uploaded into a dataset's draft, one at a time, each with its progress, so a
// dropped folder of many files shows what is done, what is going and what failed.

import { uploadFile, type UploadPhase } from '../api/datasets';
import { datasetPath } from '../logic/datasets';
import type { DroppedFile } from '../logic/upload';

export interface UploadItem {
  key: number;
  path: string;
  size: number;
  phase: UploadPhase | 'waiting' | 'done' | 'failed' | 'canceled';
  done: number;
  /** 'small' (through the API) or 'multipart' (straight to storage), once known. */
  way: 'small' | 'multipart' | null;
  error: Error | null;
}

let nextKey = 1;

export class UploadQueue {
  items = $state<UploadItem[]>([]);
  running = $state(false);
  #files = new Map<number, File>();
  #abort: AbortController | null = null;

  constructor(readonly dataset: string, private readonly onfinished: () => void) {}

  add(files: DroppedFile[], folder = ''): void {
    for (const f of files) {
      const key = nextKey++;
      this.#files.set(key, f.file);
      this.items.push({ key, path: datasetPath(folder, f.path), size: f.file.size, phase: 'waiting', done: 0, way: null, error: null });
    }
    void this.#run();
  }

  get busy(): boolean {
    return this.items.some((i) => i.phase !== 'done' && i.phase !== 'failed' && i.phase !== 'canceled');
  }

  cancel(): void {
    this.#abort?.abort();
    for (const i of this.items) if (i.phase === 'waiting') i.phase = 'canceled';
  }

  clearFinished(): void {
    this.items = this.items.filter((i) => i.phase !== 'done' && i.phase !== 'failed' && i.phase !== 'canceled');
  }

  async #run(): Promise<void> {
    if (this.running) return;
    this.running = true;
    let uploaded = 0;
    try {
      for (;;) {
        const item = this.items.find((i) => i.phase === 'waiting');
        if (!item) break;
        const file = this.#files.get(item.key)!;
        this.#abort = new AbortController();
        try {
          item.way = await uploadFile(this.dataset, item.path, file, {
            signal: this.#abort.signal,
            onprogress: (phase, done) => {
              item.phase = phase;
              item.done = done;
              // Only a file going in parts is hashed first.
              if (phase === 'hashing') item.way = 'multipart';
            },
          });
          item.phase = 'done';
          item.done = item.size;
          uploaded += 1;
        } catch (e) {
          if ((e as Error)?.name === 'AbortError') item.phase = 'canceled';
          else {
            item.phase = 'failed';
            item.error = e as Error;
          }
        } finally {
          this.#files.delete(item.key);
        }
      }
    } finally {
      this.running = false;
      this.#abort = null;
      if (uploaded) this.onfinished();
    }
  }
}
