// Pipelines as a person reads them: whether a pipeline run (or a step of it) is still going,
// a tone for each status of the grid, and the definition editor's text checked for its shape
// before it is sent (the server checks the rest and answers 422 naming the stage and step).

export const PIPELINE_STATUSES = ['queued', 'running', 'awaiting_approval', 'succeeded', 'failed', 'stopped'] as const;
const PIPELINE_ACTIVE = ['queued', 'running', 'awaiting_approval'];
const STEP_ACTIVE = ['waiting', 'queued', 'dispatched', 'pending', 'running', 'stopping'];

/** A pipeline run that may still change (the grid keeps polling it; Stop applies). */
export function isPipelineActive(status: string): boolean {
  return PIPELINE_ACTIVE.includes(status);
}

/** A step or stage that has not reached its end. */
export function isStepActive(status: string): boolean {
  return STEP_ACTIVE.includes(status);
}

export type Tone = 'ok' | 'bad' | 'active' | 'waiting' | 'neutral';

/** The colour class of a pipeline, stage or step status. */
export function statusTone(status: string): Tone {
  switch (status) {
    case 'succeeded':
      return 'ok';
    case 'failed':
      return 'bad';
    case 'awaiting_approval':
    case 'waiting':
      return 'waiting';
    case 'canceled':
    case 'stopped':
      return 'neutral';
    default:
      return isStepActive(status) ? 'active' : 'neutral';
  }
}

/** A status in words: `awaiting_approval` → "awaiting approval". */
export function statusLabel(status: string): string {
  return status.replaceAll('_', ' ');
}

export interface DefinitionInput {
  params: Record<string, string>;
  stages: unknown[];
}

export type Parsed = { ok: true; value: DefinitionInput } | { ok: false; error: string };

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Reads the editor's JSON `{params, stages}`: a step may name its task by `"task": "<name>"`
 * (one of `tasks`), which becomes its `task_id`. Only the shape is checked here.
 */
export function parseDefinition(text: string, tasks: { id: string; name: string }[] = []): Parsed {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    return { ok: false, error: `Not valid JSON: ${(e as Error).message}` };
  }
  if (!isObject(raw)) return { ok: false, error: 'The definition must be a JSON object with "params" and "stages".' };
  const params = raw.params ?? {};
  if (!isObject(params) || Object.values(params).some((v) => typeof v !== 'string')) {
    return { ok: false, error: '"params" must be an object of string values ({"NAME": "default"}).' };
  }
  if (!Array.isArray(raw.stages) || raw.stages.length === 0) return { ok: false, error: '"stages" must be a list of at least one stage.' };
  const stages: unknown[] = [];
  for (const [i, stage] of raw.stages.entries()) {
    const where = `stage ${i + 1}`;
    if (!isObject(stage) || typeof stage.name !== 'string' || !stage.name) return { ok: false, error: `${where} needs a "name".` };
    if (!Array.isArray(stage.steps) || stage.steps.length === 0) return { ok: false, error: `stage "${stage.name}" needs at least one step in "steps".` };
    const steps: unknown[] = [];
    for (const [j, step] of stage.steps.entries()) {
      if (!isObject(step) || typeof step.name !== 'string' || !step.name) return { ok: false, error: `step ${j + 1} of stage "${stage.name}" needs a "name".` };
      const { task, ...rest } = step;
      if (task !== undefined) {
        const found = tasks.filter((t) => t.name === task);
        if (found.length !== 1) {
          return { ok: false, error: `step "${step.name}": ${found.length ? 'several tasks are' : 'no task is'} named "${String(task)}".` };
        }
        rest.task_id = found[0].id;
      }
      if (typeof rest.task_id !== 'string') return { ok: false, error: `step "${step.name}" needs a "task" (a task's name) or a "task_id".` };
      steps.push(rest);
    }
    stages.push({ ...stage, steps });
  }
  return { ok: true, value: { params: params as Record<string, string>, stages } };
}

/** The editor's text for a stored pipeline: steps name their task by name where it is known. */
export function definitionText(
  def: { params?: Record<string, string>; stages: { steps: { task_id: string }[] }[] },
  tasks: { id: string; name: string }[] = [],
): string {
  const names = new Map<string, string[]>();
  for (const t of tasks) names.set(t.name, [...(names.get(t.name) ?? []), t.id]);
  const stages = def.stages.map((stage) => ({
    ...stage,
    steps: stage.steps.map((step) => {
      const name = tasks.find((t) => t.id === step.task_id)?.name;
      if (name === undefined || names.get(name)!.length !== 1) return step;
      const { task_id: _, ...rest } = step;
      return { ...rest, task: name };
    }),
  }));
  return JSON.stringify({ params: def.params ?? {}, stages }, null, 2);
}

/** The run's parameter values to send: only those changed from their defaults. */
export function changedParams(defaults: Record<string, string>, values: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(values)) if (k in defaults && defaults[k] !== v) out[k] = v;
  return out;
}

/** Counts of a grid's steps by tone, for a one-line summary ("2 of 3 steps succeeded"). */
export function progress(stages: { steps: { status: string }[] }[]): { done: number; total: number } {
  let done = 0;
  let total = 0;
  for (const s of stages) for (const step of s.steps) {
    total += 1;
    if (step.status === 'succeeded') done += 1;
  }
  return { done, total };
}
