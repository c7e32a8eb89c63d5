// Pure helpers over task file paths and the file tree the API returns.

export interface TreeNode {
  name: string;
  path: string;
  kind: 'file' | 'folder';
  size: number;
  main: boolean;
  children?: TreeNode[];
}

export function basename(path: string): string {
  const i = path.lastIndexOf('/');
  return i < 0 ? path : path.slice(i + 1);
}

/** The folder holding `path` ('' for the top level). */
export function dirname(path: string): string {
  const i = path.lastIndexOf('/');
  return i < 0 ? '' : path.slice(0, i);
}

export function join(folder: string, name: string): string {
  return folder ? `${folder}/${name}` : name;
}

/** Where `from` lands when dropped on `folder` ('' = top level), or null when that is no move. */
export function dropTarget(from: string, folder: string): string | null {
  if (folder === from || folder.startsWith(`${from}/`)) return null; // into itself
  const to = join(folder, basename(from));
  return to === from ? null : to;
}

/** Every file path below the nodes, depth first. */
export function filePaths(nodes: TreeNode[]): string[] {
  const out: string[] = [];
  const walk = (list: TreeNode[]) => {
    for (const n of list) {
      if (n.kind === 'file') out.push(n.path);
      else walk(n.children ?? []);
    }
  };
  walk(nodes);
  return out;
}

/**
 * Adds folders that exist only in the browser (the API keeps no empty folders: a folder exists
 * while a file lies below it) to a tree, sorted folders first then by name.
 */
export function withPendingFolders(nodes: TreeNode[], pending: Iterable<string>): TreeNode[] {
  const clone = (list: TreeNode[]): TreeNode[] =>
    list.map((n) => (n.kind === 'folder' ? { ...n, children: clone(n.children ?? []) } : { ...n }));
  const root = clone(nodes);
  for (const folder of pending) {
    let level = root;
    let prefix = '';
    for (const part of folder.split('/')) {
      prefix = join(prefix, part);
      let node = level.find((n) => n.path === prefix);
      if (!node) {
        node = { name: part, path: prefix, kind: 'folder', size: 0, main: false, children: [] };
        level.push(node);
      }
      if (node.kind !== 'folder') break;
      level = node.children ??= [];
    }
  }
  const sort = (list: TreeNode[]) => {
    list.sort((a, b) => (a.kind === b.kind ? a.name.localeCompare(b.name) : a.kind === 'folder' ? -1 : 1));
    for (const n of list) if (n.children) sort(n.children);
  };
  sort(root);
  return root;
}

/** The language whose editor mode fits a file, by its extension. */
export function modeOf(path: string): 'python' | 'java' | 'r' | 'scala' | null {
  const ext = basename(path).split('.').pop()?.toLowerCase();
  switch (ext) {
    case 'py':
      return 'python';
    case 'java':
      return 'java';
    case 'r':
      return 'r';
    case 'scala':
    case 'sc':
      return 'scala';
    default:
      return null;
  }
}

/** Renames a path that lies at or below `from` to lie below `to` instead. */
export function rebase(path: string, from: string, to: string): string | null {
  if (path === from) return to;
  if (path.startsWith(`${from}/`)) return to + path.slice(from.length);
  return null;
}
