import { test, expect, login, Api, openTask, typeCode, apiControl, unique } from './helpers';

test('an edit made while the API is down is saved once it is back', async ({ page }) => {
  test.skip(!process.env.E2E_CONTROL_URL, 'needs the stack started by global-setup');
  const alice = await Api.as('alice');
  const task = await alice.createTask(unique('outage'));
  await login(page, 'alice');
  await openTask(page, task.id);
  await apiControl('api-stop');
  try {
    await typeCode(page, 'print("written while the server was down")\n');
    await expect(page.getByRole('status').filter({ hasText: 'Your edits are kept' })).toBeVisible({ timeout: 20_000 });
    await expect(page.locator('[data-save-state]')).toHaveAttribute('data-save-state', 'error', { timeout: 20_000 });
    // The edit waits in the browser's storage.
    const draft = await page.evaluate((id) => localStorage.getItem(`coderun.draft.${id}.main.py`), task.id);
    expect(draft).toBe('print("written while the server was down")\n');
  } finally {
    await apiControl('api-start');
  }
  await expect(page.locator('[data-save-state]')).toHaveAttribute('data-save-state', 'saved', { timeout: 30_000 });
  await expect(page.getByRole('status').filter({ hasText: 'Your edits are kept' })).toHaveCount(0);
  expect((await alice.file(task.id, 'main.py')).text).toBe('print("written while the server was down")\n');
});
