// Reads files and whole folders dropped from the computer, with their relative paths.

export interface Dropped {
  path: string;
  content: string;
}

/** A dropped file with its path relative to what was dropped (`folder/sub/file.csv`). */
export interface DroppedFile {
  path: string;
  file: File;
}

// The File and Directory Entries API as the browser exposes it on dropped items.
interface Entry {
  isFile: boolean;
  isDirectory: boolean;
  name: string;
  file?(ok: (f: File) => void, fail: (e: unknown) => void): void;
  createReader?(): { readEntries(ok: (entries: Entry[]) => void, fail: (e: unknown) => void): void };
}

async function walk(entry: Entry, prefix: string, out: DroppedFile[]): Promise<void> {
  const path = prefix ? `${prefix}/${entry.name}` : entry.name;
  if (entry.isFile && entry.file) {
    const file = await new Promise<File>((ok, fail) => entry.file!(ok, fail));
    out.push({ path, file });
  } else if (entry.isDirectory && entry.createReader) {
    const reader = entry.createReader();
    // readEntries answers in batches until it returns an empty one.
    for (;;) {
      const batch = await new Promise<Entry[]>((ok, fail) => reader.readEntries(ok, fail));
      if (batch.length === 0) break;
      for (const child of batch) await walk(child, path, out);
    }
  }
}

export async function readDropped(data: DataTransfer): Promise<Dropped[]> {
  const files = await readDroppedFiles(data);
  return Promise.all(files.map(async (f) => ({ path: f.path, content: await f.file.text() })));
}

/** The dropped files and folders' files, without reading them (datasets can be large). */
export async function readDroppedFiles(data: DataTransfer): Promise<DroppedFile[]> {
  const out: DroppedFile[] = [];
  const entries: Entry[] = [];
  for (const item of Array.from(data.items ?? [])) {
    const entry = (item as DataTransferItem & { webkitGetAsEntry?: () => Entry | null }).webkitGetAsEntry?.();
    if (entry) entries.push(entry);
  }
  if (entries.length) {
    for (const e of entries) await walk(e, '', out);
    return out;
  }
  for (const f of Array.from(data.files ?? [])) out.push({ path: f.name, file: f });
  return out;
}

/** The files an `<input type="file">` chose; a folder input gives each its relative path. */
export function pickedFiles(list: FileList | File[] | null | undefined): DroppedFile[] {
  return Array.from(list ?? []).map((file) => ({ path: file.webkitRelativePath || file.name, file }));
}
