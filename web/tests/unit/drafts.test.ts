import { describe, expect, it } from 'vitest';
import { Drafts, type DraftStorage } from '../../src/lib/logic/drafts';

class MemoryStorage implements DraftStorage {
  map = new Map<string, string>();
  full = false;
  getItem(k: string) {
    return this.map.get(k) ?? null;
  }
  setItem(k: string, v: string) {
    if (this.full) throw new Error('QuotaExceededError');
    this.map.set(k, v);
  }
  removeItem(k: string) {
    this.map.delete(k);
  }
}

describe('drafts', () => {
  it('keeps unsaved content per task and path until dropped', () => {
    const s = new MemoryStorage();
    const d = new Drafts(s);
    d.put('t1', 'main.py', 'print(1)');
    expect(d.get('t1', 'main.py')).toBe('print(1)');
    expect(d.get('t2', 'main.py')).toBeNull();
    d.drop('t1', 'main.py');
    expect(d.get('t1', 'main.py')).toBeNull();
  });

  it('a full storage is not an error', () => {
    const s = new MemoryStorage();
    s.full = true;
    expect(() => new Drafts(s).put('t', 'a', 'x')).not.toThrow();
  });

  it('drafts follow a moved folder', () => {
    const d = new Drafts(new MemoryStorage());
    d.put('t', 'src/a.py', 'A');
    d.put('t', 'other.py', 'O');
    d.move('t', 'src', 'lib', ['src/a.py', 'other.py']);
    expect(d.get('t', 'lib/a.py')).toBe('A');
    expect(d.get('t', 'src/a.py')).toBeNull();
    expect(d.get('t', 'other.py')).toBe('O');
  });
});
