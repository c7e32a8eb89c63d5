import { readFileSync } from 'node:fs';
import { test, expect, login, Api, checkA11y, screenshot, unique, openTask } from './helpers';

// The staff routes the app uses, as the committed API contract lists them.
const contract = JSON.parse(readFileSync(new URL('../../openapi.json', import.meta.url), 'utf8'));

test("a student never sees another student's task, and a deep link to it shows not found", async ({ page }) => {
  const bob = await Api.as('bob');
  const name = unique('bob private');
  const task = await bob.createTask(name);
  await login(page, 'alice');
  await page.getByPlaceholder('Search by name').fill('bob private');
  await expect(page.getByText('No task matches.')).toBeVisible();
  await page.goto(`/tasks/${task.id}`);
  await expect(page.getByRole('heading', { name: 'Not found' })).toBeVisible();
  await expect(page.getByText(name)).toHaveCount(0);
  await checkA11y(page, 'not found');
});

test("a teacher opens a student's task read-only, with its files, runs and logs", async ({ page }) => {
  const alice = await Api.as('alice');
  const name = unique('for the teacher');
  const task = await alice.createTask(name, { 'main.py': 'print("hello teacher")\n' });
  const run = await alice.json('POST', `/tasks/${task.id}/runs`, {});
  await alice.settle(task.id);

  await login(page, 'teacher');
  await openTask(page, task.id);
  await expect(page.getByRole('note')).toHaveText('Read-only');
  await expect(page.locator('.cm-content')).toContainText('hello teacher');
  await expect(page.locator('.cm-content')).toHaveAttribute('contenteditable', 'false');
  await expect(page.getByRole('button', { name: 'Run', exact: true })).toHaveCount(0);
  await expect(page.getByRole('button', { name: 'New file' })).toHaveCount(0);
  await page.getByRole('list', { name: 'Runs of this task' }).getByRole('button').first().click();
  await expect(page).toHaveURL(new RegExp(`run=${run.id}`));
  await expect(page.getByRole('log', { name: 'Run log' })).toContainText('hello teacher');
  await expect(page.locator('.end-title')).toHaveText('Succeeded');
  await screenshot(page, 'teacher-view');
  await checkA11y(page, 'teacher workspace');
});

test('a teacher lists the users with their counts and opens a student\'s tasks', async ({ page }) => {
  test.skip(!contract.paths['/api/v1/users']?.get, 'the API contract has no user list yet');
  const alice = await Api.as('alice');
  const name = unique('listed for the teacher');
  await alice.createTask(name);
  await login(page, 'teacher');
  await page.getByRole('link', { name: 'Users' }).click();
  const row = page.getByRole('row').filter({ has: page.getByRole('link', { name: 'alice', exact: true }) });
  await expect(row).toBeVisible();
  await checkA11y(page, 'users');
  await row.getByRole('link', { name: 'alice', exact: true }).click();
  await expect(page.getByRole('heading', { name: 'Tasks of alice' })).toBeVisible();
  await page.getByPlaceholder('Search by name').fill(name);
  await page.getByRole('link', { name }).click();
  await expect(page.getByRole('note')).toHaveText('Read-only');
});

test('an admin creates users from a CSV and sees which lines failed', async ({ page }) => {
  test.skip(!contract.paths['/api/v1/users:batch'], 'the API contract has no batch user creation yet');
  const suffix = unique('u').split(' ')[1];
  const good = `csv_${suffix}`;
  await login(page, 'admin');
  await page.getByRole('link', { name: 'Users' }).click();
  await expect(page.getByRole('heading', { name: 'Create users from a CSV file' })).toBeVisible();
  await page.getByLabel('CSV file', { exact: true }).setInputFiles({
    name: 'users.csv',
    mimeType: 'text/csv',
    buffer: Buffer.from(`username,password,role\n${good},secret-password-1,student\nbad_${suffix},secret-password-2,wizard\n`),
  });
  const report = page.getByRole('status').filter({ hasText: 'created' });
  await expect(report).toContainText('1 created, 1 failed');
  await expect(page.getByRole('table', { name: 'Lines that failed' })).toContainText(`bad_${suffix}`);
  await expect(page.getByRole('link', { name: good, exact: true })).toBeVisible();
  const r = await page.request.post('/api/v1/auth/login', { data: { username: good, password: 'secret-password-1' } });
  expect(r.status()).toBe(200);
});

test('at phone width the panes stack and Run switches to the log', async ({ page }) => {
  const alice = await Api.as('alice');
  const task = await alice.createTask(unique('phone'), { 'main.py': 'print("small screen")\n' });
  await page.setViewportSize({ width: 390, height: 844 });
  await login(page, 'alice');
  await openTask(page, task.id);
  await expect(page.getByRole('navigation', { name: 'Panes' })).toBeVisible();
  await expect(page.getByRole('region', { name: 'Files' })).toBeHidden();
  await screenshot(page, 'phone-editor');
  await page.locator('.cm-content').click();
  await page.keyboard.press('ControlOrMeta+Enter');
  await expect(page.getByRole('log', { name: 'Run log' })).toContainText('small screen', { timeout: 45_000 });
  await expect(page.locator('.cm-content')).toBeHidden();
  await screenshot(page, 'phone-run');
});
