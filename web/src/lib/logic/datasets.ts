// Datasets as the app shows and uses them: version labels, the values the run panel submits
// (`name` for the latest published version, `name@v2` for a pinned one), what a run recorded,
// and how a file is uploaded (small through the API, large in presigned parts).

import type { DatasetDetail, DatasetFile, DatasetSummary, MultipartUpload } from '../api/types';

/** `v2` for 2 or `'v2'` or `'2'`. */
export function versionLabel(v: string | number | null | undefined): string {
  if (v === null || v === undefined || v === '') return '';
  const s = String(v);
  return /^\d+$/.test(s) ? `v${s}` : s;
}

/** Splits `name@v2` into its name and version (`null`: the latest published). */
export function parseRef(ref: string): { name: string; version: string | null } {
  const at = ref.lastIndexOf('@');
  if (at <= 0) return { name: ref, version: null };
  return { name: ref.slice(0, at), version: versionLabel(ref.slice(at + 1)) || null };
}

export interface PickerOption {
  value: string;
  label: string;
}
export interface PickerChoice {
  name: string;
  title: string;
  /** The latest first (`name`), then each version, newest first (`name@v2`, `name@v1`). */
  options: PickerOption[];
}

/** What the run panel offers: each dataset with a published version, latest or pinned. */
export function pickerChoices(datasets: DatasetSummary[]): PickerChoice[] {
  const out: PickerChoice[] = [];
  for (const d of datasets) {
    const versions = [...(d.versions ?? [])].map((v) => versionLabel(v.version)).sort((a, b) => versionNumber(b) - versionNumber(a));
    const latest = versionLabel(d.latest_version) || versions[0] || '';
    if (!latest) continue;
    out.push({
      name: d.name,
      title: d.title || d.name,
      options: [{ value: d.name, label: `latest (${latest})` }, ...versions.map((v) => ({ value: `${d.name}@${v}`, label: v }))],
    });
  }
  return out.sort((a, b) => a.name.localeCompare(b.name));
}

function versionNumber(v: string): number {
  const m = /^v?(\d+)$/.exec(v);
  return m ? Number(m[1]) : -1;
}

/** The submit body's `datasets` from the panel's choices (dataset → value, or absent). */
export function selectionToSubmit(chosen: Record<string, string | null | undefined>): string[] | undefined {
  const values = Object.entries(chosen)
    .filter(([, v]) => !!v)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([, v]) => v as string);
  return values.length ? values : undefined;
}

/** What a run recorded, as `name@v1` labels, whatever form the API gives it in. */
export function runDatasetLabels(datasets: unknown): string[] {
  if (!Array.isArray(datasets)) return [];
  return datasets.map((d) => {
    if (typeof d === 'string') return d;
    if (d && typeof d === 'object' && 'name' in d) {
      const o = d as { name: string; version?: string | number | null };
      const v = versionLabel(o.version);
      return v ? `${o.name}@${v}` : o.name;
    }
    return String(d);
  });
}

/** A dataset's files: the draft's (`version` null) or a version's. */
export function filesOf(detail: DatasetDetail, version: string | null): DatasetFile[] {
  if (version === null) {
    const d = detail.draft;
    if (!d) return [];
    return Array.isArray(d) ? d : (d.files ?? []);
  }
  return detail.versions.find((v) => versionLabel(v.version) === version)?.files ?? [];
}

/** The bytes of a list of files. */
export function totalSize(files: { size: number }[]): number {
  return files.reduce((n, f) => n + f.size, 0);
}

// ---- Uploads ---------------------------------------------------------------------------

/** Files up to this size are PUT through the API (its file limit is 10 MiB by default). */
export const SMALL_MAX = 8 * 1024 * 1024;
/** The part size the app asks for when the server does not say (S3's minimum is 5 MiB). */
export const DEFAULT_PART_SIZE = 16 * 1024 * 1024;

export type UploadPlan = { kind: 'small' } | { kind: 'multipart' };

/** Small files go through the API in one PUT; larger ones straight to storage in parts. */
export function planUpload(size: number, smallMax = SMALL_MAX): UploadPlan {
  return size <= smallMax ? { kind: 'small' } : { kind: 'multipart' };
}

export interface PartRange {
  /** 1-based, as S3 numbers parts. */
  number: number;
  start: number;
  /** Exclusive. */
  end: number;
  url: string;
}

/** The presigned URL of each part, in order, from the server's answer. */
export function partUrls(upload: MultipartUpload): string[] {
  if (upload.parts?.length) {
    const parts = upload.parts.map((p, i) => (typeof p === 'string' ? { n: i + 1, url: p } : { n: p.part_number ?? p.number ?? i + 1, url: p.url }));
    return parts.sort((a, b) => a.n - b.n).map((p) => p.url);
  }
  return upload.part_urls ?? upload.urls ?? [];
}

/**
 * Splits a file of `size` bytes into the parts the server presigned: `part_size` bytes each
 * (the last one shorter) when it says, else as evenly as its number of URLs allows.
 */
export function splitParts(size: number, upload: MultipartUpload): PartRange[] {
  const urls = partUrls(upload);
  if (urls.length === 0) throw new Error('The server gave no part URLs for this upload.');
  const partSize = upload.part_size && upload.part_size > 0 ? upload.part_size : Math.ceil(size / urls.length);
  const needed = Math.max(1, Math.ceil(size / partSize));
  if (needed !== urls.length) throw new Error(`The server presigned ${urls.length} parts for a file that needs ${needed}.`);
  return urls.map((url, i) => ({ number: i + 1, start: i * partSize, end: Math.min(size, (i + 1) * partSize), url }));
}

/** The id to complete a multipart upload with. */
export function uploadId(upload: MultipartUpload): string {
  const id = upload.id ?? upload.upload_id;
  if (!id) throw new Error('The server gave no id for this upload.');
  return id;
}

/** Joins a folder and a dropped file's relative path into the dataset path it gets. */
export function datasetPath(folder: string, relative: string): string {
  const parts = [...folder.split('/'), ...relative.split('/')].filter((p) => p && p !== '.');
  return parts.join('/');
}

/** "1.2 GB" and below, like `size` but going one step further. */
export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}
