// The API's shapes, taken from the generated OpenAPI types (`npm run gen:api` writes
// schema.d.ts from web/openapi.json), so a change of the contract breaks the app's build.
import type { components } from './schema';

type S = components['schemas'];

export type Me = S['User'];
export type LoginResponse = S['LoginResponse'];
export type Task = S['Task'];
export type TaskDetail = S['TaskDetail'];
export type TreeNode = S['TreeNode'];
export type Run = S['Run'];
export type RunDetail = S['RunDetail'];
export type RunEvent = S['RunEvent'];
export type OutputLink = S['OutputLink'];
export type Language = S['LanguageInfo'];
export type Spec = S['SpecInfo'];
export type Dataset = S['Dataset'];

/** A page of a list: `{items, page, per_page, total}`. */
export interface Page<T> {
  items: T[];
  page: number;
  per_page: number;
  total: number;
}
export type OutputPage = Page<OutputLink>;

export type UserSummary = S['UserSummary'];
export type BatchReport = S['BatchReport'];
