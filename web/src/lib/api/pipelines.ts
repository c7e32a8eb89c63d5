// The pipelines API (issue 11): definitions, their runs with the stage/step grid, stop, retry,
// and the staff's approval decisions.
import { request } from './client';
import type { Page, Pipeline, PipelineRun, Task } from './types';
import type { DefinitionInput } from '../logic/pipelines';

export const PIPELINES_PER_PAGE = 20;
export const RUNS_PER_PAGE = 10;

export function listPipelines(page: number, owner: string | null): Promise<Page<Pipeline>> {
  return request<Page<Pipeline>>('GET', '/pipelines', { query: { page, per_page: PIPELINES_PER_PAGE, owner } });
}

export function getPipeline(id: string): Promise<Pipeline> {
  return request<Pipeline>('GET', `/pipelines/${id}`);
}

export function createPipeline(name: string, def: DefinitionInput): Promise<Pipeline> {
  return request<Pipeline>('POST', '/pipelines', { json: { name, ...def } });
}

export function updatePipeline(id: string, name: string, def: DefinitionInput): Promise<Pipeline> {
  return request<Pipeline>('PATCH', `/pipelines/${id}`, { json: { name, ...def } });
}

export function deletePipeline(id: string): Promise<void> {
  return request<void>('DELETE', `/pipelines/${id}`);
}

export function listPipelineRuns(id: string, page: number, status: string): Promise<Page<PipelineRun>> {
  return request<Page<PipelineRun>>('GET', `/pipelines/${id}/runs`, { query: { page, per_page: RUNS_PER_PAGE, status } });
}

export function startPipelineRun(id: string, params: Record<string, string>): Promise<PipelineRun> {
  return request<PipelineRun>('POST', `/pipelines/${id}/runs`, { json: { params } });
}

export function getPipelineRun(id: string): Promise<PipelineRun> {
  return request<PipelineRun>('GET', `/pipeline-runs/${id}`);
}

export function stopPipelineRun(id: string): Promise<PipelineRun> {
  return request<PipelineRun>('POST', `/pipeline-runs/${id}/stop`);
}

export function retryPipelineRun(id: string): Promise<PipelineRun> {
  return request<PipelineRun>('POST', `/pipeline-runs/${id}/retry`);
}

export function decideStage(id: string, stage: string, decision: 'approve' | 'reject', comment: string): Promise<PipelineRun> {
  return request<PipelineRun>('POST', `/pipeline-runs/${id}/stages/${encodeURIComponent(stage)}/${decision}`, {
    json: comment.trim() ? { comment: comment.trim() } : {},
  });
}

/** The owner's tasks (up to 100), to name a step's task by its name. */
export async function ownerTasks(owner: string | null): Promise<Task[]> {
  return (await request<Page<Task>>('GET', '/tasks', { query: { per_page: 100, owner } })).items;
}
