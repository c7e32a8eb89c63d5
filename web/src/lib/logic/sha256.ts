// The SHA-256 of a file of any size, read a few MiB at a time: Web Crypto's digest needs the
// whole file in memory, so the hashing is hash-wasm's incremental one, loaded only when a
// large file is uploaded.

export const HASH_CHUNK = 4 * 1024 * 1024;

export async function sha256Hex(
  blob: Blob,
  onprogress?: (hashed: number) => void,
  signal?: AbortSignal,
  chunk = HASH_CHUNK,
): Promise<string> {
  const { createSHA256 } = await import('hash-wasm');
  const hasher = await createSHA256();
  hasher.init();
  for (let offset = 0; offset < blob.size; offset += chunk) {
    signal?.throwIfAborted();
    const end = Math.min(blob.size, offset + chunk);
    hasher.update(new Uint8Array(await blob.slice(offset, end).arrayBuffer()));
    onprogress?.(end);
  }
  return hasher.digest('hex');
}
