// The task list: one page at a time, newest change first, filtered by name; and the
// catalogue (languages, specs, datasets) the forms choose from.

import { request } from '../api/client';
import type { Dataset, Language, Page, Spec, Task, TaskDetail } from '../api/types';

export const PER_PAGE = 20;

class Tasks {
  items = $state.raw<Task[]>([]);
  total = $state(0);
  page = $state(1);
  q = $state('');
  loading = $state(false);
  /** Staff: whose tasks (null: the caller's own). */
  owner = $state<string | null>(null);

  async load(): Promise<void> {
    this.loading = true;
    try {
      const r = await request<Page<Task>>('GET', '/tasks', {
        query: { page: this.page, per_page: PER_PAGE, q: this.q.trim(), owner: this.owner },
      });
      this.items = r.items;
      this.total = r.total;
    } finally {
      this.loading = false;
    }
  }

  get pages(): number {
    return Math.max(1, Math.ceil(this.total / PER_PAGE));
  }

  create(name: string, language: string, description: string): Promise<TaskDetail> {
    return request<TaskDetail>('POST', '/tasks', { json: { name, language, description } });
  }

  update(id: string, patch: { name?: string; description?: string; command?: string | null; main_file?: string }): Promise<TaskDetail> {
    return request<TaskDetail>('PATCH', `/tasks/${id}`, { json: patch });
  }

  async remove(id: string): Promise<void> {
    await request<void>('DELETE', `/tasks/${id}`);
  }
}

export const tasks = new Tasks();

class Catalogue {
  languages = $state.raw<Language[]>([]);
  specs = $state.raw<Spec[]>([]);
  datasets = $state.raw<Dataset[]>([]);
  #loaded: Promise<void> | null = null;

  load(): Promise<void> {
    this.#loaded ??= Promise.all([
      request<Language[]>('GET', '/languages'),
      request<Spec[]>('GET', '/specs'),
      request<Dataset[]>('GET', '/datasets'),
    ]).then(
      ([l, s, d]) => {
        this.languages = l;
        this.specs = s;
        this.datasets = d;
      },
      (e) => {
        this.#loaded = null;
        throw e;
      },
    );
    return this.#loaded;
  }

  /** The datasets again (a teacher may have published since): the run panel opens with them. */
  async reloadDatasets(): Promise<void> {
    this.datasets = await request<Dataset[]>('GET', '/datasets');
  }
}

export const catalogue = new Catalogue();
