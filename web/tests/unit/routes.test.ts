import { describe, expect, it } from 'vitest';
import { loginPath, pageParam, parseRoute } from '../../src/lib/logic/routes';
import { atBottom, visibleRange } from '../../src/lib/logic/viewport';

describe('routes', () => {
  it('parses every view', () => {
    expect(parseRoute('/', '')).toEqual({ name: 'tasks' });
    expect(parseRoute('/tasks/abc', '?run=r1')).toEqual({ name: 'task', id: 'abc', run: 'r1' });
    expect(parseRoute('/users', '')).toEqual({ name: 'users' });
    expect(parseRoute('/users/u1', '?name=alice')).toEqual({ name: 'user', id: 'u1', username: 'alice' });
    expect(parseRoute('/pipelines', '')).toEqual({ name: 'pipelines', owner: null, username: null });
    expect(parseRoute('/pipelines', '?owner=u1&name=alice')).toEqual({ name: 'pipelines', owner: 'u1', username: 'alice' });
    expect(parseRoute('/pipelines/p1', '?status=failed')).toEqual({ name: 'pipeline', id: 'p1', status: 'failed' });
    expect(parseRoute('/pipelines/p1', '')).toEqual({ name: 'pipeline', id: 'p1', status: '' });
    expect(parseRoute('/pipeline-runs/r1', '')).toEqual({ name: 'pipelineRun', id: 'r1' });
    expect(parseRoute('/callbacks', '')).toEqual({ name: 'callbacks' });
    expect(parseRoute('/callbacks/w1', '')).toEqual({ name: 'callback', id: 'w1', page: 1 });
    expect(parseRoute('/callbacks/w1', '?page=3')).toEqual({ name: 'callback', id: 'w1', page: 3 });
    expect(parseRoute('/callbacks/w1/x', '')).toEqual({ name: 'notfound' });
    expect(parseRoute('/nope/x/y', '')).toEqual({ name: 'notfound' });
  });

  it('reads a page number from the address, the first page when it is not one', () => {
    expect(pageParam('2')).toBe(2);
    expect(pageParam(null)).toBe(1);
    expect(pageParam('0')).toBe(1);
    expect(pageParam('-4')).toBe(1);
    expect(pageParam('2.5')).toBe(1);
    expect(pageParam('x')).toBe(1);
    expect(pageParam('99999999999')).toBe(1);
  });

  it('comes back to where it was after logging in, but never to another site', () => {
    expect(parseRoute('/login', `?next=${encodeURIComponent('/tasks/abc')}`)).toEqual({ name: 'login', next: '/tasks/abc' });
    expect(parseRoute('/login', '?next=https://evil.example')).toEqual({ name: 'login', next: '/' });
    expect(parseRoute('/login', '?next=//evil.example')).toEqual({ name: 'login', next: '/' });
    expect(loginPath('/tasks/abc?run=1')).toBe('/login?next=%2Ftasks%2Fabc%3Frun%3D1');
    expect(loginPath('/')).toBe('/login');
  });
});

describe('log viewport', () => {
  it('renders only the lines in view plus a margin', () => {
    expect(visibleRange(0, 180, 18, 20_000, 5)).toEqual({ start: 0, end: 15 });
    expect(visibleRange(18 * 1000, 180, 18, 20_000, 5)).toEqual({ start: 995, end: 1015 });
    expect(visibleRange(18 * 19_995, 180, 18, 20_000, 5)).toEqual({ start: 19_990, end: 20_000 });
    expect(visibleRange(0, 180, 18, 0)).toEqual({ start: 0, end: 0 });
  });

  it('knows when the view is at the bottom', () => {
    expect(atBottom(820, 180, 1000, 18)).toBe(true);
    expect(atBottom(500, 180, 1000, 18)).toBe(false);
  });
});
