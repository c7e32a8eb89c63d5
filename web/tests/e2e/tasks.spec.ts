import { test, expect, login, Api, checkA11y, screenshot, unique } from './helpers';

test('a student creates a task from a language and lands in its workspace', async ({ page }) => {
  const name = unique('my first task');
  await login(page, 'alice');
  await page.getByRole('button', { name: 'New task' }).click();
  const dialog = page.getByRole('dialog', { name: 'New task' });
  await dialog.getByLabel('Name').fill(name);
  await dialog.getByLabel('Language').selectOption('python');
  await dialog.getByRole('button', { name: 'Create' }).click();
  await expect(page.getByRole('heading', { name })).toBeVisible();
  await expect(page.locator('.cm-content')).toBeVisible();
  await expect(page.getByRole('group', { name: 'Open files' }).getByRole('button', { name: 'main.py', exact: true })).toHaveAttribute('aria-current', 'true');
  await page.getByRole('link', { name: 'Tasks' }).click();
  // Newest change first.
  await expect(page.getByRole('list', { name: 'Tasks' }).getByRole('link').first()).toHaveText(name);
});

test('a student searches, renames and deletes a task with confirmation', async ({ page }) => {
  const alice = await Api.as('alice');
  const tag = unique('searchable');
  const keep = await alice.createTask(`${tag} keep`);
  const gone = await alice.createTask(`${tag} gone`);
  await login(page, 'alice');
  await page.getByPlaceholder('Search by name').fill(tag);
  const list = page.getByRole('list', { name: 'Tasks' });
  await expect(list.getByRole('listitem')).toHaveCount(2);

  await page.getByRole('button', { name: `Rename ${tag} keep` }).click();
  const rename = page.getByRole('dialog', { name: 'Rename task' });
  await rename.getByLabel('Name').fill(`${tag} kept`);
  await rename.getByRole('button', { name: 'Save' }).click();
  await expect(list.getByRole('link', { name: `${tag} kept` })).toBeVisible();
  expect((await alice.json('GET', `/tasks/${keep.id}`)).name).toBe(`${tag} kept`);

  await page.getByRole('button', { name: `Delete ${tag} gone` }).click();
  const confirm = page.getByRole('dialog', { name: 'Delete task' });
  await expect(confirm).toContainText('cannot be undone');
  await confirm.getByRole('button', { name: 'Delete' }).click();
  await expect(list.getByRole('listitem')).toHaveCount(1);
  expect((await alice.get(`/tasks/${gone.id}`)).status()).toBe(404);
});

test('the task list is accessible in light and dark', async ({ page }) => {
  const alice = await Api.as('alice');
  await alice.createTask(unique('a11y list'));
  await login(page, 'alice');
  await expect(page.getByRole('list', { name: 'Tasks' })).toBeVisible();
  await screenshot(page, 'task-list');
  await checkA11y(page, 'task list');
  await page.getByRole('button', { name: 'New task' }).click();
  await expect(page.getByRole('dialog', { name: 'New task' })).toBeVisible();
  await checkA11y(page, 'new task dialog');
});
