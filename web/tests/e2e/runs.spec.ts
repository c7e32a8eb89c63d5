import { test, expect, login, Api, openTask, checkA11y, screenshot, unique } from './helpers';

const SLOW = 'import time\nfor i in range(6):\n    print(f"line {i}", flush=True)\n    time.sleep(1)\n';
const OUTPUTS = 'import os\nprint("writing the answer")\nwith open(os.path.join(os.environ["OUTPUT_DIR"], "answer.txt"), "w") as f:\n    f.write("42\\n")\n';
const FOREVER = 'import time\nprint("started", flush=True)\nwhile True:\n    time.sleep(0.5)\n';
const MEMORY_BOMB = 'print("allocating", flush=True)\nx = " " * (2 * 1024 ** 3)\nprint("survived")\n';

test('a program that prints slowly shows its lines before it ends', async ({ page }) => {
  const alice = await Api.as('alice');
  const task = await alice.createTask(unique('slow'), { 'main.py': SLOW });
  await login(page, 'alice');
  await openTask(page, task.id);
  await page.getByRole('button', { name: 'Run', exact: true }).click();
  const log = page.getByRole('log', { name: 'Run log' });
  await expect(log).toContainText('line 1');
  // The run is still going while its first lines are on screen.
  await expect(page.locator('.end-title')).toHaveText(/Running|Waiting/);
  await expect(page.getByRole('button', { name: 'Stop' })).toBeEnabled();
  await screenshot(page, 'workspace-live-run');
  await expect(page.locator('.end-title')).toHaveText('Succeeded', { timeout: 45_000 });
  await expect(log).toContainText('line 5');
  await expect(page.getByRole('list', { name: 'Phases' })).toContainText('running');
  await expect(page.getByRole('button', { name: 'Run', exact: true })).toBeEnabled();
});

test('a run that succeeds shows its outputs, and they and the log download', async ({ page }) => {
  const alice = await Api.as('alice');
  const task = await alice.createTask(unique('outputs'), { 'main.py': OUTPUTS });
  await login(page, 'alice');
  await openTask(page, task.id);
  // Ctrl/Cmd-Enter from the editor runs the task.
  await page.locator('.cm-content').click();
  await page.keyboard.press('ControlOrMeta+Enter');
  await expect(page.locator('.end-title')).toHaveText('Succeeded', { timeout: 45_000 });
  const link = page.getByRole('link', { name: 'answer.txt' });
  await expect(link).toBeVisible();
  const href = await link.getAttribute('href');
  const r = await page.request.get(href!);
  expect(r.status()).toBe(200);
  expect(await r.text()).toBe('42\n');

  const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Download log' }).click()]);
  const chunks: Buffer[] = [];
  for await (const c of (await download.createReadStream())!) chunks.push(c as Buffer);
  expect(Buffer.concat(chunks).toString()).toBe('writing the answer\n');
});

test('stop a long run', async ({ page }) => {
  const alice = await Api.as('alice');
  const task = await alice.createTask(unique('stop'), { 'main.py': FOREVER });
  await login(page, 'alice');
  await openTask(page, task.id);
  await page.getByRole('button', { name: 'Run', exact: true }).click();
  await expect(page.getByRole('log', { name: 'Run log' })).toContainText('started');
  await page.getByRole('button', { name: 'Stop' }).click();
  await expect(page.locator('.end-title')).toHaveText('Stopped', { timeout: 45_000 });
  await expect(page.getByRole('button', { name: 'Run', exact: true })).toBeEnabled();
});

test('a memory bomb shows "out of memory"', async ({ page }) => {
  const alice = await Api.as('alice');
  const task = await alice.createTask(unique('oom'), { 'main.py': MEMORY_BOMB });
  await login(page, 'alice');
  await openTask(page, task.id);
  await page.getByRole('button', { name: 'Run', exact: true }).click();
  await expect(page.locator('.end-title')).toHaveText('Out of memory', { timeout: 45_000 });
  await expect(page.getByRole('log', { name: 'Run log' })).not.toContainText('survived');
});

test('a second Run while one is active says so and links to it', async ({ page }) => {
  const alice = await Api.as('alice');
  const task = await alice.createTask(unique('busy'), { 'main.py': FOREVER });
  const first = await alice.json('POST', `/tasks/${task.id}/runs`, {});
  try {
    await login(page, 'alice');
    await openTask(page, task.id);
    await page.getByRole('button', { name: 'Run', exact: true }).click();
    const alert = page.getByRole('alert').filter({ hasText: 'This task already has a run in progress' });
    await expect(alert).toBeVisible();
    await alert.getByRole('button', { name: 'Show the run in progress' }).click();
    await expect(page).toHaveURL(new RegExp(`run=${first.id}`));
    await expect(page.getByRole('button', { name: 'Stop' })).toBeEnabled();
    await checkA11y(page, 'workspace with a run');
  } finally {
    await alice.json('POST', `/runs/${first.id}/stop`);
    await alice.settle(task.id);
  }
});
