import { readFileSync } from 'node:fs';
import { test, expect, login, Api, checkA11y, screenshot, unique } from './helpers';

// The pipelines routes, as the committed API contract lists them.
const contract = JSON.parse(readFileSync(new URL('../../openapi.json', import.meta.url), 'utf8'));
const hasPipelines = !!contract.paths['/api/v1/pipelines']?.post;

const BUILD = 'import os\nprint("building", os.environ.get("PARAM_N"))\nwith open(os.path.join(os.environ["OUTPUT_DIR"], "built.txt"), "w") as f:\n    f.write("ok\\n")\n';
const CHECK = 'print("checking")\n';

test('create a pipeline of two stages, start it with a parameter, and see the grid succeed', async ({ page }) => {
  test.skip(!hasPipelines, 'the API contract has no pipelines yet');
  const alice = await Api.as('alice');
  const build = unique('pipe build');
  const check = unique('pipe check');
  await alice.createTask(build, { 'main.py': BUILD });
  await alice.createTask(check, { 'main.py': CHECK });
  const name = unique('two stages');

  await login(page, 'alice');
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Pipelines' }).click();
  await expect(page.getByRole('heading', { name: 'Your pipelines' })).toBeVisible();
  await page.getByRole('button', { name: 'New pipeline' }).click();
  const dialog = page.getByRole('dialog', { name: 'New pipeline' });
  await dialog.getByLabel('Name').fill(name);
  // A step naming a task nobody has is refused before anything is sent.
  await dialog.getByLabel('Definition (JSON)').fill(JSON.stringify({ stages: [{ name: 'build', steps: [{ name: 'build', task: 'no such task' }] }] }));
  await dialog.getByRole('button', { name: 'Create' }).click();
  await expect(dialog.getByRole('alert')).toHaveText('step "build": no task is named "no such task".');
  await dialog.getByLabel('Definition (JSON)').fill(
    JSON.stringify({ params: { N: '1' }, stages: [{ name: 'build', steps: [{ name: 'build', task: build }] }, { name: 'check', steps: [{ name: 'check', task: check }] }] }, null, 2),
  );
  await screenshot(page, 'pipeline-new');
  await checkA11y(page, 'new pipeline dialog');
  await dialog.getByRole('button', { name: 'Create' }).click();

  await expect(page.getByRole('heading', { name, level: 1 })).toBeVisible();
  await expect(page.getByText('No runs yet.')).toBeVisible();
  await checkA11y(page, 'pipeline');
  await page.getByLabel('N', { exact: true }).fill('7');
  await page.getByRole('button', { name: 'Start run' }).click();

  await expect(page).toHaveURL(/\/pipeline-runs\//);
  const stages = page.getByRole('list', { name: 'Stages' });
  await expect(stages.getByRole('heading', { name: 'build' })).toBeVisible();
  await expect(page.locator('.pipeline-status')).toHaveText('succeeded', { timeout: 50_000 });
  await expect(page.getByRole('status')).toContainText('2 of 2 steps succeeded');
  await expect(page.getByText('N=7')).toBeVisible();
  await expect(page.getByRole('button', { name: 'Retry' })).toBeEnabled();
  await screenshot(page, 'pipeline-run');
  await checkA11y(page, 'pipeline run');

  // A deep link (reload) lands on the same grid.
  const runUrl = page.url();
  await page.reload();
  await expect(page.locator('.pipeline-status')).toHaveText('succeeded');

  // Each step links to its run in the task's workspace: its log and outputs.
  await page.getByRole('link', { name: 'Log and outputs of build' }).click();
  await expect(page.getByRole('log', { name: 'Run log' })).toContainText('building 7');
  await expect(page.getByRole('link', { name: 'built.txt' })).toBeVisible();

  // The pipeline's runs, filtered by status.
  await page.goto(runUrl);
  await page.getByRole('link', { name: `← ${name}` }).click();
  const runs = page.getByRole('table', { name: 'Pipeline runs' });
  await expect(runs.getByRole('row')).toHaveCount(2);
  await page.getByLabel('Filter pipeline runs by status').selectOption('failed');
  await expect(page.getByText('No runs in this status.')).toBeVisible();
  await expect(page).toHaveURL(/status=failed/);
  await page.getByLabel('Filter pipeline runs by status').selectOption('succeeded');
  await expect(runs.getByRole('row')).toHaveCount(2);
  await screenshot(page, 'pipeline');

  await page.getByRole('link', { name: '← Pipelines' }).click();
  await expect(page.getByRole('list', { name: 'Pipelines' }).getByRole('link', { name })).toBeVisible();
  await screenshot(page, 'pipelines');
  await checkA11y(page, 'pipelines');
});

test('a teacher approves a stage awaiting approval with a comment, and the run goes on', async ({ page }) => {
  test.skip(!hasPipelines, 'the API contract has no pipelines yet');
  const alice = await Api.as('alice');
  const first = await alice.createTask(unique('gate first'), { 'main.py': CHECK });
  const second = await alice.createTask(unique('gate second'), { 'main.py': CHECK });
  const pipeline = await alice.json('POST', '/pipelines', {
    name: unique('gated'),
    stages: [
      { name: 'first', steps: [{ name: 'first', task_id: first.id }] },
      { name: 'release', approval: true, steps: [{ name: 'second', task_id: second.id }] },
    ],
  });
  const run = await alice.json('POST', `/pipelines/${pipeline.id}/runs`, {});

  await login(page, 'teacher', `/pipeline-runs/${run.id}`);
  await expect(page.locator('.pipeline-status')).toHaveText('awaiting approval', { timeout: 50_000 });
  // Staff read it, but stopping is the owner's.
  await expect(page.getByRole('button', { name: 'Stop' })).toHaveCount(0);
  const decide = page.getByRole('form', { name: 'Decide on stage release' });
  await decide.getByLabel('Comment').fill('looks good');
  await screenshot(page, 'pipeline-approval');
  await checkA11y(page, 'pipeline run awaiting approval');
  await decide.getByRole('button', { name: 'Approve' }).click();
  await expect(page.getByText('Approved', { exact: false })).toContainText('looks good');
  await expect(page.locator('.pipeline-status')).toHaveText('succeeded', { timeout: 50_000 });
});

test('the owner stops a pipeline run and retries it; a teacher finds the pipeline from the user list', async ({ page }) => {
  test.skip(!hasPipelines, 'the API contract has no pipelines yet');
  const alice = await Api.as('alice');
  const task = await alice.createTask(unique('pipe forever'), { 'main.py': 'import time\nprint("started", flush=True)\nwhile True:\n    time.sleep(0.5)\n' });
  const name = unique('stoppable');
  const pipeline = await alice.json('POST', '/pipelines', { name, stages: [{ name: 'long', steps: [{ name: 'forever', task_id: task.id }] }] });
  const run = await alice.json('POST', `/pipelines/${pipeline.id}/runs`, {});
  let retried: string | null = null;
  try {
    await login(page, 'alice', `/pipeline-runs/${run.id}`);
    await expect(page.getByRole('list', { name: 'Steps of long' })).toContainText(/running|queued|dispatched|pending/);
    await page.getByRole('button', { name: 'Stop' }).click();
    await expect(page.locator('.pipeline-status')).toHaveText('stopped', { timeout: 45_000 });
    await page.getByRole('button', { name: 'Retry' }).click();
    await expect(page).not.toHaveURL(new RegExp(run.id));
    retried = page.url().split('/').pop()!;
    await expect(page.getByRole('link', { name: 'the run it retries' })).toBeVisible();
    await expect(page.getByRole('button', { name: 'Stop' })).toBeVisible();
  } finally {
    if (retried) await alice.json('POST', `/pipeline-runs/${retried}/stop`);
    await alice.settle(task.id);
  }

  await page.getByRole('button', { name: 'Log out' }).click();
  await login(page, 'teacher');
  await page.getByRole('link', { name: 'Users' }).click();
  await page.getByRole('link', { name: 'alice', exact: true }).click();
  await page.getByRole('link', { name: 'Pipelines of alice' }).click();
  await expect(page.getByRole('heading', { name: 'Pipelines of alice' })).toBeVisible();
  await page.getByRole('list', { name: 'Pipelines' }).getByRole('link', { name }).click();
  await expect(page.getByRole('heading', { name, level: 1 })).toBeVisible();
  // Staff read another user's pipeline; editing and starting stay the owner's.
  await expect(page.getByRole('button', { name: 'Start run' })).toHaveCount(0);
  await expect(page.getByRole('button', { name: 'Edit' })).toHaveCount(0);
  await expect(page.getByRole('table', { name: 'Pipeline runs' }).getByRole('row')).toHaveCount(3);
});
