import { describe, expect, it } from 'vitest';
import { basename, dirname, dropTarget, filePaths, join, modeOf, rebase, withPendingFolders, type TreeNode } from '../../src/lib/logic/paths';

const tree: TreeNode[] = [
  { name: 'main.py', path: 'main.py', kind: 'file', size: 3, main: true },
  {
    name: 'src', path: 'src', kind: 'folder', size: 0, main: false,
    children: [{ name: 'a.py', path: 'src/a.py', kind: 'file', size: 1, main: false }],
  },
];

describe('paths', () => {
  it('splits and joins paths', () => {
    expect(basename('src/a.py')).toBe('a.py');
    expect(basename('a.py')).toBe('a.py');
    expect(dirname('src/lib/a.py')).toBe('src/lib');
    expect(dirname('a.py')).toBe('');
    expect(join('', 'a.py')).toBe('a.py');
    expect(join('src', 'a.py')).toBe('src/a.py');
  });

  it('a drop moves a node into the folder it lands on', () => {
    expect(dropTarget('main.py', 'src')).toBe('src/main.py');
    expect(dropTarget('src/a.py', '')).toBe('a.py');
  });

  it('dropping a folder into itself or where it already is does nothing', () => {
    expect(dropTarget('src', 'src')).toBeNull();
    expect(dropTarget('src', 'src/lib')).toBeNull();
    expect(dropTarget('src/a.py', 'src')).toBeNull();
  });

  it('lists every file below a tree', () => {
    expect(filePaths(tree)).toEqual(['main.py', 'src/a.py']);
  });

  it('shows folders that exist only in the browser, nested and sorted folders first', () => {
    const out = withPendingFolders(tree, ['lib/deep', 'src/new']);
    expect(out.map((n) => n.path)).toEqual(['lib', 'src', 'main.py']);
    expect(out[0].children?.map((n) => n.path)).toEqual(['lib/deep']);
    expect(out[1].children?.map((n) => n.path)).toEqual(['src/new', 'src/a.py']);
    // The input tree is left as it was.
    expect(tree[1].children).toHaveLength(1);
  });

  it('rebases paths below a moved folder and leaves others alone', () => {
    expect(rebase('src/a.py', 'src', 'lib')).toBe('lib/a.py');
    expect(rebase('src', 'src', 'lib')).toBe('lib');
    expect(rebase('srcx/a.py', 'src', 'lib')).toBeNull();
  });

  it('picks the editor mode from the extension', () => {
    expect(modeOf('main.py')).toBe('python');
    expect(modeOf('Main.java')).toBe('java');
    expect(modeOf('main.R')).toBe('r');
    expect(modeOf('Main.scala')).toBe('scala');
    expect(modeOf('README.md')).toBeNull();
  });
});
