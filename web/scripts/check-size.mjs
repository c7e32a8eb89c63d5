// Fails the build when the app grows past its budgets (gzipped):
//   - the app shell without the editor (what index.html loads): 60 KB;
//   - the JavaScript needed before the editor is usable (the shell, CodeMirror, and the
//     largest language package): 300 KB.
// Reads Vite's manifest (dist/.vite/manifest.json) to follow static and dynamic imports.
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { join } from 'node:path';

const dist = new URL('../dist/', import.meta.url).pathname;
const manifest = JSON.parse(readFileSync(join(dist, '.vite/manifest.json'), 'utf8'));
const SHELL_MAX = 60 * 1024;
const EDITOR_MAX = 300 * 1024;

const gz = (file) => gzipSync(readFileSync(join(dist, file)), { level: 9 }).length;

/** Files a chunk needs before it runs: itself, its CSS, and its static imports, recursively. */
function closure(key, seen = new Set()) {
  const chunk = manifest[key];
  if (!chunk || seen.has(key)) return seen;
  seen.add(key);
  for (const k of chunk.imports ?? []) closure(k, seen);
  return seen;
}
function files(keys, withCss) {
  const out = new Set();
  for (const k of keys) {
    out.add(manifest[k].file);
    if (withCss) for (const c of manifest[k].css ?? []) out.add(c);
  }
  return out;
}
const total = (set) => [...set].reduce((n, f) => n + gz(f), 0);

const entry = Object.keys(manifest).find((k) => manifest[k].isEntry);
const shellKeys = closure(entry);
const shellFiles = files(shellKeys, true);
const shell = total(shellFiles);

const editorKey = Object.keys(manifest).find((k) => k.endsWith('src/lib/editor/codemirror.ts'));
if (!editorKey) throw new Error('check-size: the editor chunk is missing from the manifest');
const editorKeys = closure(editorKey, new Set(shellKeys));
const editorFiles = [...files(editorKeys, false)].filter((f) => !shellFiles.has(f) && f.endsWith('.js'));
let largestLanguage = 0;
let largestName = '';
for (const dyn of manifest[editorKey].dynamicImports ?? []) {
  const keys = [...closure(dyn, new Set(editorKeys))].filter((k) => !editorKeys.has(k));
  const size = total(files(keys, false));
  if (size > largestLanguage) [largestLanguage, largestName] = [size, dyn];
}
const shellJs = total(new Set([...shellFiles].filter((f) => f.endsWith('.js'))));
const editorReady = shellJs + total(new Set(editorFiles)) + largestLanguage;

const kb = (n) => `${(n / 1024).toFixed(1)} KB`;
console.log(`app shell (JS + CSS, gzipped): ${kb(shell)} (budget ${kb(SHELL_MAX)})`);
console.log(`JS before the editor is usable (shell + editor + largest language, ${largestName}): ${kb(editorReady)} (budget ${kb(EDITOR_MAX)})`);
let failed = false;
if (shell > SHELL_MAX) {
  console.error('check-size: the app shell is over its budget');
  failed = true;
}
if (editorReady > EDITOR_MAX) {
  console.error('check-size: the JavaScript before the editor is usable is over its budget');
  failed = true;
}
process.exit(failed ? 1 : 0);
