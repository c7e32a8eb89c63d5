import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  bytes,
  datasetPath,
  filesOf,
  parseRef,
  partUrls,
  pickerChoices,
  planUpload,
  runDatasetLabels,
  selectionToSubmit,
  splitParts,
  versionLabel,
  SMALL_MAX,
} from '../../src/lib/logic/datasets';
import { sha256Hex } from '../../src/lib/logic/sha256';
import { uploadFile, type UploadDeps } from '../../src/lib/api/datasets';
import { parseRoute } from '../../src/lib/logic/routes';
import type { DatasetSummary } from '../../src/lib/api/types';

const MiB = 1024 * 1024;

const iris: DatasetSummary = {
  name: 'iris',
  title: 'Iris flowers',
  description: '',
  latest_version: 'v2',
  versions: [
    { version: 'v1', size: 10, file_count: 1, published_at: '2026-01-01T00:00:00Z' },
    { version: 'v2', size: 20, file_count: 2, published_at: '2026-02-01T00:00:00Z' },
  ],
};

describe('dataset picker values', () => {
  it('offers the latest (the bare name) first, then each version newest first', () => {
    expect(pickerChoices([iris])).toEqual([
      {
        name: 'iris',
        title: 'Iris flowers',
        options: [
          { value: 'iris', label: 'latest (v2)' },
          { value: 'iris@v2', label: 'v2' },
          { value: 'iris@v1', label: 'v1' },
        ],
      },
    ]);
  });

  it('leaves out a dataset with nothing published and sorts by name', () => {
    const draftOnly: DatasetSummary = { name: 'a-draft', title: 'Draft', latest_version: null, versions: [] };
    const cars: DatasetSummary = { ...iris, name: 'cars', title: 'cars', latest_version: 1, versions: [{ version: 1, size: 1, file_count: 1, published_at: '' }] };
    const choices = pickerChoices([iris, draftOnly, cars]);
    expect(choices.map((c) => c.name)).toEqual(['cars', 'iris']);
    expect(choices[0].options).toEqual([
      { value: 'cars', label: 'latest (v1)' },
      { value: 'cars@v1', label: 'v1' },
    ]);
  });

  it('submits the chosen values in name order, or nothing', () => {
    expect(selectionToSubmit({ iris: 'iris@v1', cars: 'cars', unused: '' })).toEqual(['cars', 'iris@v1']);
    expect(selectionToSubmit({ iris: '' })).toBeUndefined();
    expect(selectionToSubmit({})).toBeUndefined();
  });

  it('reads references and version labels', () => {
    expect(parseRef('iris@v2')).toEqual({ name: 'iris', version: 'v2' });
    expect(parseRef('iris@3')).toEqual({ name: 'iris', version: 'v3' });
    expect(parseRef('iris')).toEqual({ name: 'iris', version: null });
    expect(versionLabel(4)).toBe('v4');
    expect(versionLabel('v4')).toBe('v4');
    expect(versionLabel(null)).toBe('');
  });

  it("shows what a run recorded, as strings or as objects", () => {
    expect(runDatasetLabels(['iris@v1'])).toEqual(['iris@v1']);
    expect(runDatasetLabels([{ name: 'iris', version: 2 }, { name: 'cars', version: 'v1' }])).toEqual(['iris@v2', 'cars@v1']);
    expect(runDatasetLabels(undefined)).toEqual([]);
  });

  it("finds the draft's and a version's files", () => {
    const detail = {
      ...iris,
      versions: [{ ...iris.versions[0], files: [{ path: 'a.csv', size: 10, sha256: 'x' }] }],
      draft: { files: [{ path: 'b.csv', size: 3 }] },
    };
    expect(filesOf(detail, 'v1').map((f) => f.path)).toEqual(['a.csv']);
    expect(filesOf(detail, null).map((f) => f.path)).toEqual(['b.csv']);
    expect(filesOf({ ...detail, draft: [{ path: 'c', size: 1 }] }, null).map((f) => f.path)).toEqual(['c']);
    expect(filesOf({ ...detail, draft: null }, null)).toEqual([]);
    expect(filesOf(detail, 'v9')).toEqual([]);
  });
});

describe('upload planning', () => {
  it('sends small files through the API and larger ones in parts', () => {
    expect(planUpload(0)).toEqual({ kind: 'small' });
    expect(planUpload(SMALL_MAX)).toEqual({ kind: 'small' });
    expect(planUpload(SMALL_MAX + 1)).toEqual({ kind: 'multipart' });
    expect(planUpload(100, 50)).toEqual({ kind: 'multipart' });
  });

  it("splits a file into the server's parts, the last one shorter", () => {
    const parts = splitParts(12 * MiB + 3, { id: 'u', part_size: 5 * MiB, parts: [{ part_number: 1, url: 'p1' }, { part_number: 2, url: 'p2' }, { part_number: 3, url: 'p3' }] });
    expect(parts).toEqual([
      { number: 1, start: 0, end: 5 * MiB, url: 'p1' },
      { number: 2, start: 5 * MiB, end: 10 * MiB, url: 'p2' },
      { number: 3, start: 10 * MiB, end: 12 * MiB + 3, url: 'p3' },
    ]);
    // Every byte once, in order.
    expect(parts.reduce((n, p) => n + p.end - p.start, 0)).toBe(12 * MiB + 3);
  });

  it('derives the part size from the number of URLs when the server does not say', () => {
    expect(splitParts(10, { id: 'u', urls: ['a', 'b', 'c'] }).map((p) => [p.start, p.end])).toEqual([
      [0, 4],
      [4, 8],
      [8, 10],
    ]);
  });

  it('takes the part URLs in part order, whatever the form', () => {
    expect(partUrls({ parts: [{ part_number: 2, url: 'b' }, { part_number: 1, url: 'a' }] })).toEqual(['a', 'b']);
    expect(partUrls({ parts: ['a', 'b'] })).toEqual(['a', 'b']);
    expect(partUrls({ part_urls: ['x'] })).toEqual(['x']);
  });

  it('refuses parts that do not cover the file', () => {
    expect(() => splitParts(11 * MiB, { id: 'u', part_size: 5 * MiB, urls: ['a', 'b'] })).toThrow(/needs 3/);
    expect(() => splitParts(1, { id: 'u', urls: [] })).toThrow(/no part URLs/);
  });

  it('keeps a dropped folder under the chosen folder', () => {
    expect(datasetPath('', 'photos/a.jpg')).toBe('photos/a.jpg');
    expect(datasetPath('raw/', 'photos/a.jpg')).toBe('raw/photos/a.jpg');
    expect(datasetPath('/raw//2024', './a.csv')).toBe('raw/2024/a.csv');
  });

  it('writes sizes', () => {
    expect(bytes(512)).toBe('512 B');
    expect(bytes(1536)).toBe('1.5 KB');
    expect(bytes(3 * 1024 ** 3)).toBe('3.0 GB');
  });
});

describe('sha256', () => {
  it('hashes a file in chunks to the same digest as hashing it whole', async () => {
    const data = new Uint8Array(3 * 1024 * 1024 + 17).map((_, i) => (i * 31) & 0xff);
    const seen: number[] = [];
    const hex = await sha256Hex(new Blob([data]), (n) => seen.push(n), undefined, 1024 * 1024);
    expect(hex).toBe(createHash('sha256').update(data).digest('hex'));
    expect(seen).toEqual([1, 2, 3].map((n) => n * 1024 * 1024).concat(data.length));
  });

  it('hashes an empty file', async () => {
    expect(await sha256Hex(new Blob([]))).toBe('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  });
});

/** Records every request an upload makes. */
function fakeDeps(opts: { smallStatus?: number; parts?: number; partSize?: number } = {}) {
  const calls: { kind: string; method: string; target: string; body?: unknown; size?: number; text?: Promise<string> }[] = [];
  const deps: UploadDeps = {
    send: async (method, target, body, o) => {
      calls.push({ kind: o.api ? 'api' : 'storage', method, target, size: body.size, text: body.text() });
      o.onprogress?.(body.size);
      const status = o.api ? (opts.smallStatus ?? 201) : 200;
      return { status, etag: null, text: '' };
    },
    json: async <T,>(method: string, path: string, body?: unknown): Promise<T> => {
      calls.push({ kind: 'json', method, target: path, body });
      if (path.endsWith('/uploads')) {
        const n = opts.parts ?? 2;
        return { id: 'up-1', part_size: opts.partSize, parts: Array.from({ length: n }, (_, i) => ({ number: i + 1, url: `https://s3.example/part${i + 1}` })) } as T;
      }
      return {} as T;
    },
    hash: sha256Hex,
  };
  return { deps, calls };
}

describe('uploading a file', () => {
  it('PUTs a small file through the API', async () => {
    const { deps, calls } = fakeDeps();
    const way = await uploadFile('iris', 'raw/a b.csv', new Blob(['1,2\n']), { deps });
    expect(way).toBe('small');
    expect(calls.map((c) => [c.kind, c.method, c.target])).toEqual([['api', 'PUT', '/api/v1/datasets/iris/files/raw/a%20b.csv']]);
  });

  it('sends a large file in presigned parts with its sha256, then completes it', async () => {
    const data = new Uint8Array(10).map((_, i) => i);
    const { deps, calls } = fakeDeps({ parts: 3, partSize: 4 });
    const progress: [string, number][] = [];
    const way = await uploadFile('iris', 'big.bin', new Blob([data]), { deps, smallMax: 5, onprogress: (p, n) => progress.push([p, n]) });
    expect(way).toBe('multipart');
    expect(calls[0]).toMatchObject({ kind: 'json', method: 'POST', target: '/datasets/iris/uploads', body: { path: 'big.bin', size: 10, sha256: createHash('sha256').update(data).digest('hex') } });
    expect(calls.slice(1, 4).map((c) => [c.kind, c.target, c.size])).toEqual([
      ['storage', 'https://s3.example/part1', 4],
      ['storage', 'https://s3.example/part2', 4],
      ['storage', 'https://s3.example/part3', 2],
    ]);
    expect(calls[4]).toMatchObject({ kind: 'json', method: 'POST', target: '/datasets/iris/uploads/up-1:complete', body: undefined });
    expect(calls).toHaveLength(5);
    const sent = progress.filter(([p]) => p === 'sending').map(([, n]) => n);
    expect(sent.at(-1)).toBe(10);
    expect(sent).toEqual([...sent].sort((a, b) => a - b));
    expect(progress.at(-1)).toEqual(['completing', 10]);
  });

  it('takes the multipart way when the API says the file is too large for it', async () => {
    const { deps, calls } = fakeDeps({ smallStatus: 413, parts: 1 });
    const way = await uploadFile('iris', 'a.csv', new Blob(['x'.repeat(100)]), { deps });
    expect(way).toBe('multipart');
    expect(calls.map((c) => c.kind)).toEqual(['api', 'json', 'storage', 'json']);
  });
});

describe('dataset routes', () => {
  it('parses the list and a dataset with its version', () => {
    expect(parseRoute('/datasets', '')).toEqual({ name: 'datasets' });
    expect(parseRoute('/datasets/iris', '?version=v2')).toEqual({ name: 'dataset', dataset: 'iris', version: 'v2' });
    expect(parseRoute('/datasets/iris', '')).toEqual({ name: 'dataset', dataset: 'iris', version: null });
  });
});
