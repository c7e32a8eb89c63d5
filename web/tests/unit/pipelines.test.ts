import { describe, expect, it } from 'vitest';
import { changedParams, definitionText, isPipelineActive, parseDefinition, progress, statusLabel, statusTone } from '../../src/lib/logic/pipelines';

const tasks = [
  { id: 't1', name: 'build' },
  { id: 't2', name: 'check' },
  { id: 't3', name: 'twice' },
  { id: 't4', name: 'twice' },
];

describe('pipeline statuses', () => {
  it('keeps polling only while a pipeline run may change', () => {
    for (const s of ['queued', 'running', 'awaiting_approval']) expect(isPipelineActive(s)).toBe(true);
    for (const s of ['succeeded', 'failed', 'stopped']) expect(isPipelineActive(s)).toBe(false);
  });

  it('gives every grid status a tone and words', () => {
    expect(statusTone('succeeded')).toBe('ok');
    expect(statusTone('failed')).toBe('bad');
    expect(statusTone('awaiting_approval')).toBe('waiting');
    expect(statusTone('waiting')).toBe('waiting');
    expect(statusTone('running')).toBe('active');
    expect(statusTone('dispatched')).toBe('active');
    expect(statusTone('canceled')).toBe('neutral');
    expect(statusTone('stopped')).toBe('neutral');
    expect(statusTone('something new')).toBe('neutral');
    expect(statusLabel('awaiting_approval')).toBe('awaiting approval');
  });

  it('counts the steps that succeeded', () => {
    expect(progress([{ steps: [{ status: 'succeeded' }, { status: 'running' }] }, { steps: [{ status: 'waiting' }] }])).toEqual({ done: 1, total: 3 });
    expect(progress([])).toEqual({ done: 0, total: 0 });
  });
});

describe('the definition editor', () => {
  it('turns task names into task ids and keeps the rest', () => {
    const text = JSON.stringify({
      params: { N: '3' },
      stages: [
        { name: 'one', steps: [{ name: 'a', task: 'build', command: 'python main.py' }] },
        { name: 'two', approval: true, steps: [{ name: 'b', task_id: 't2', allow_failure: true }] },
      ],
    });
    expect(parseDefinition(text, tasks)).toEqual({
      ok: true,
      value: {
        params: { N: '3' },
        stages: [
          { name: 'one', steps: [{ name: 'a', task_id: 't1', command: 'python main.py' }] },
          { name: 'two', approval: true, steps: [{ name: 'b', task_id: 't2', allow_failure: true }] },
        ],
      },
    });
  });

  it('params may be left out', () => {
    const r = parseDefinition('{"stages": [{"name": "s", "steps": [{"name": "a", "task_id": "x"}]}]}');
    expect(r).toEqual({ ok: true, value: { params: {}, stages: [{ name: 's', steps: [{ name: 'a', task_id: 'x' }] }] } });
  });

  it('says what is wrong with the shape, naming the stage and step', () => {
    const err = (text: string) => {
      const r = parseDefinition(text, tasks);
      return r.ok ? null : r.error;
    };
    expect(err('{')).toMatch(/^Not valid JSON/);
    expect(err('[]')).toMatch(/JSON object/);
    expect(err('{"stages": []}')).toMatch(/at least one stage/);
    expect(err('{"params": {"N": 3}, "stages": [{}]}')).toMatch(/"params"/);
    expect(err('{"stages": [{"steps": []}]}')).toBe('stage 1 needs a "name".');
    expect(err('{"stages": [{"name": "s", "steps": []}]}')).toMatch(/stage "s" needs at least one step/);
    expect(err('{"stages": [{"name": "s", "steps": [{"task": "build"}]}]}')).toBe('step 1 of stage "s" needs a "name".');
    expect(err('{"stages": [{"name": "s", "steps": [{"name": "a"}]}]}')).toMatch(/step "a" needs a "task"/);
    expect(err('{"stages": [{"name": "s", "steps": [{"name": "a", "task": "nope"}]}]}')).toBe('step "a": no task is named "nope".');
    expect(err('{"stages": [{"name": "s", "steps": [{"name": "a", "task": "twice"}]}]}')).toBe('step "a": several tasks are named "twice".');
  });

  it('shows a stored pipeline with task names where they are unambiguous, and reads it back', () => {
    const def = {
      params: { N: '1' },
      stages: [{ name: 's', approval: false, steps: [{ name: 'a', task_id: 't1' }, { name: 'b', task_id: 't3' }, { name: 'c', task_id: 'gone' }] }],
    };
    const text = definitionText(def, tasks);
    expect(JSON.parse(text).stages[0].steps).toEqual([{ name: 'a', task: 'build' }, { name: 'b', task_id: 't3' }, { name: 'c', task_id: 'gone' }]);
    expect(parseDefinition(text, tasks)).toEqual({ ok: true, value: def });
  });
});

describe('starting a run', () => {
  it('sends only the parameters changed from their defaults', () => {
    expect(changedParams({ N: '10', MODE: 'fast' }, { N: '10', MODE: 'slow', EXTRA: 'x' })).toEqual({ MODE: 'slow' });
    expect(changedParams({}, {})).toEqual({});
  });
});
