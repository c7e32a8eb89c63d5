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
export type Dataset = DatasetSummary;

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

// Datasets (API v1, issue 13): what the app reads, a little wider than the contract (versions
// as `v1` or `1`, a draft as `{files}` or a list); `Fits` below holds them to the generated types.
/** One published version in the list: `v1`, `v2`, … */
export interface DatasetVersionSummary {
  version: string | number;
  /** `name@vN`. */
  ref?: string;
  /** sha256 of the version's manifest: equal checksums, equal contents. */
  checksum?: string;
  size: number;
  file_count: number;
  published_at: string;
}
/** `GET /datasets`: the published datasets. */
export interface DatasetSummary {
  name: string;
  title: string;
  description?: string | null;
  /** Where the data comes from and its licence. */
  source?: string | null;
  latest_version?: string | number | null;
  versions: DatasetVersionSummary[];
}
/** One file of a draft or a version. */
export interface DatasetFile {
  path: string;
  size: number;
  sha256?: string | null;
  /** A presigned download link, when the API hands one out. */
  url?: string | null;
}
/** `GET /datasets/{name}`: the dataset, its versions with their files, and (staff) the draft. */
export interface DatasetDetail extends Omit<DatasetSummary, 'versions'> {
  versions: (DatasetVersionSummary & { files?: DatasetFile[] })[];
  draft?: { files: DatasetFile[] } | DatasetFile[] | null;
}
/** `POST /datasets/{name}/uploads`: where each part of a large file goes. */
export interface MultipartUpload {
  id?: string;
  upload_id?: string;
  part_size?: number;
  parts?: ({ part_number?: number; number?: number; url: string; size?: number } | string)[];
  part_urls?: string[];
  urls?: string[];
}

/** Compiles only when the contract's `T` fits the app's `U`: a change of the API breaks the build. */
type Fits<T extends U, U> = T;
export type ContractDataset = Fits<S['Dataset'], DatasetSummary>;
export type ContractDatasetDetail = Fits<S['DatasetDetail'], DatasetDetail>;
export type ContractDatasetFile = Fits<S['FileEntry'], DatasetFile>;
export type ContractUpload = Fits<S['CreatedUpload'], MultipartUpload>;

// Pipelines (issue 11): a pipeline is its newest version; a pipeline run carries its grid.
export type Pipeline = S['Pipeline'];
export type PipelineRun = S['PipelineRun'];
export type PipelineStatus = S['PipelineStatus'];
export type StageView = S['StageView'];
export type StepView = S['StepView'];
export type StageDefinition = S['StageDefinition'];
export type StepDefinition = S['StepDefinition'];

// Status callbacks (issue 11): the caller's endpoints, their deliveries with every attempt.
export type Webhook = S['Endpoint'];
export type CreatedWebhook = S['CreatedWebhook'];
export type WebhookEvent = S['CreateWebhook']['events'][number];
export type Delivery = S['Delivery'];
export type DeliveryAttempt = S['Attempt'];
