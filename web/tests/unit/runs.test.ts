import { describe, expect, it } from 'vitest';
import { duration, endState, isActive, size, timeline } from '../../src/lib/logic/runs';

describe('run states', () => {
  it('knows which statuses are active', () => {
    for (const s of ['queued', 'dispatched', 'pending', 'running', 'stopping']) expect(isActive(s)).toBe(true);
    for (const s of ['succeeded', 'failed', 'stopped', 'canceled']) expect(isActive(s)).toBe(false);
  });

  it('says how a run ended in plain words', () => {
    expect(endState({ status: 'succeeded', exit_code: 0 }).title).toBe('Succeeded');
    expect(endState({ status: 'failed', exit_code: 3 }).detail).toBe('Exit code 3.');
    expect(endState({ status: 'failed', reason: 'oom_killed', spec: { memory_mib: 256 } })).toMatchObject({
      title: 'Out of memory',
      detail: 'The program used more than its 256 MiB and was killed.',
      tone: 'bad',
    });
    expect(endState({ status: 'failed', reason: 'deadline_exceeded', spec: { wall_seconds: 30 } }).title).toBe('Time limit');
    expect(endState({ status: 'failed', reason: 'output_limit_exceeded' }).title).toBe('Log too long');
    expect(endState({ status: 'stopped', reason: 'stopped_by_user' }).title).toBe('Stopped');
    expect(endState({ status: 'canceled' }).title).toBe('Canceled');
    expect(endState({ status: 'queued' }).title).toBe('Waiting to start…');
  });

  it('gives each phase its duration, the last one running until now', () => {
    const events = [
      { phase: 'queued', at: '2026-01-01T00:00:00.000Z' },
      { phase: 'running', at: '2026-01-01T00:00:01.500Z' },
    ];
    const now = Date.parse('2026-01-01T00:00:04.000Z');
    expect(timeline(events, now, false).map((e) => e.ms)).toEqual([1500, 2500]);
    expect(timeline(events, now, true).map((e) => e.ms)).toEqual([1500, null]);
  });

  it('formats durations and sizes', () => {
    expect(duration(850)).toBe('850 ms');
    expect(duration(4200)).toBe('4.2 s');
    expect(duration(125_000)).toBe('2 min 5 s');
    expect(size(100)).toBe('100 B');
    expect(size(2048)).toBe('2.0 KB');
  });
});
