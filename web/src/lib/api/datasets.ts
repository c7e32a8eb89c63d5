// The datasets API: list, detail, create, publish, delete; and one file's upload into the
// draft, small files through the API, large ones in presigned parts straight to storage.

import { encodePath, request, upload, url, type UploadResult } from './client';
import type { DatasetDetail, DatasetSummary, MultipartUpload } from './types';
import { planUpload, splitParts, uploadId, SMALL_MAX } from '../logic/datasets';
import { sha256Hex } from '../logic/sha256';

export const listDatasets = () => request<DatasetSummary[]>('GET', '/datasets');
export const getDataset = (name: string) => request<DatasetDetail>('GET', `/datasets/${encodeURIComponent(name)}`);
export const createDataset = (body: { name: string; title: string; description?: string; source?: string }) =>
  request<DatasetDetail>('POST', '/datasets', { json: body });
export const publishDataset = (name: string) => request<unknown>('POST', `/datasets/${encodeURIComponent(name)}:publish`);
export const deleteDraftFile = (name: string, path: string) =>
  request<void>('DELETE', `/datasets/${encodeURIComponent(name)}/files/${encodePath(path)}`);
export const deleteDataset = (name: string) => request<void>('DELETE', `/datasets/${encodeURIComponent(name)}`);
export const deleteVersion = (name: string, version: string) =>
  request<void>('DELETE', `/datasets/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}`);

/** Where an upload is: hashing the file, sending it, or asking the server to finish it. */
export type UploadPhase = 'hashing' | 'sending' | 'completing';

export interface UploadDeps {
  /** PUT/POST a body with progress (the client's XHR by default). */
  send: typeof upload;
  /** A JSON request to the API (the client's `request` by default). */
  json: <T>(method: string, path: string, body?: unknown) => Promise<T>;
  hash: typeof sha256Hex;
}

const defaultDeps: UploadDeps = {
  send: upload,
  json: (method, path, body) => request(method, path, body === undefined ? {} : { json: body }),
  hash: sha256Hex,
};

export interface UploadOptions {
  onprogress?: (phase: UploadPhase, done: number, total: number) => void;
  signal?: AbortSignal;
  smallMax?: number;
  deps?: Partial<UploadDeps>;
}

/** Uploads one file into the dataset's draft at `path`; says which way it went. */
export async function uploadFile(dataset: string, path: string, file: Blob, options: UploadOptions = {}): Promise<'small' | 'multipart'> {
  const deps = { ...defaultDeps, ...options.deps };
  const report = options.onprogress ?? (() => {});
  const base = `/datasets/${encodeURIComponent(dataset)}`;
  if (planUpload(file.size, options.smallMax ?? SMALL_MAX).kind === 'small') {
    report('sending', 0, file.size);
    const r: UploadResult = await deps.send('PUT', url(`${base}/files/${encodePath(path)}`), file, {
      api: true,
      contentType: 'application/octet-stream',
      signal: options.signal,
      onprogress: (n) => report('sending', Math.min(n, file.size), file.size),
    });
    // Over the API's body limit after all: take the multipart way.
    if (r.status !== 413) {
      report('sending', file.size, file.size);
      return 'small';
    }
  }

  report('hashing', 0, file.size);
  const sha256 = await deps.hash(file, (n) => report('hashing', n, file.size), options.signal);
  const created = await deps.json<MultipartUpload>('POST', `${base}/uploads`, { path, size: file.size, sha256 });
  const parts = splitParts(file.size, created);
  let sent = 0;
  report('sending', 0, file.size);
  for (const part of parts) {
    options.signal?.throwIfAborted();
    await deps.send('PUT', part.url, file.slice(part.start, part.end), {
      api: false,
      signal: options.signal,
      onprogress: (n) => report('sending', sent + Math.min(n, part.end - part.start), file.size),
    });
    sent += part.end - part.start;
    report('sending', sent, file.size);
  }
  report('completing', file.size, file.size);
  // No part list: the server asks the storage for the parts (a page cannot read a part's ETag
  // unless the storage exposes it), then checks the size and SHA-256 it was told.
  await deps.json('POST', `${base}/uploads/${encodeURIComponent(uploadId(created))}:complete`);
  return 'multipart';
}
