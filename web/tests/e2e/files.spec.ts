import { test, expect, login, Api, openTask, typeCode, checkA11y, unique } from './helpers';

test('create a folder and a file, type code, save, reload and find it', async ({ page }) => {
  const alice = await Api.as('alice');
  const task = await alice.createTask(unique('files'));
  await login(page, 'alice');
  await openTask(page, task.id);

  await page.getByRole('button', { name: 'New folder' }).click();
  let dialog = page.getByRole('dialog', { name: 'New folder' });
  await dialog.getByLabel(/Name/).fill('src');
  await dialog.getByRole('button', { name: 'Create' }).click();
  await expect(page.locator('[data-path="src"]')).toBeVisible();

  // The new folder is selected, so the new file goes into it.
  await page.getByRole('button', { name: 'New file' }).click();
  dialog = page.getByRole('dialog', { name: 'New file' });
  await expect(dialog).toContainText('in src/');
  await dialog.getByLabel(/Name/).fill('util.py');
  await dialog.getByRole('button', { name: 'Create' }).click();
  await expect(page.getByRole('group', { name: 'Open files' }).getByRole('button', { name: 'util.py', exact: true })).toHaveAttribute('aria-current', 'true');

  await typeCode(page, 'def answer():\n    return 42\n');
  await page.keyboard.press('ControlOrMeta+s');
  await expect(page.locator('[data-save-state]')).toHaveAttribute('data-save-state', 'saved');
  expect(await alice.file(task.id, 'src/util.py')).toEqual({ status: 200, text: 'def answer():\n    return 42\n' });

  await page.reload();
  await expect(page.locator('.cm-content')).toBeVisible();
  await page.locator('[data-path="src/util.py"]').click();
  await expect(page.locator('.cm-content')).toContainText('return 42');
});

test('autosave saves after a pause, and the tab shows unsaved changes until then', async ({ page }) => {
  const alice = await Api.as('alice');
  const task = await alice.createTask(unique('autosave'));
  await login(page, 'alice');
  await openTask(page, task.id);
  await typeCode(page, 'print("autosaved")\n');
  await expect(page.getByRole('group', { name: 'Open files' }).getByRole('button', { name: 'main.py (unsaved)' })).toBeVisible();
  await expect(page.locator('[data-save-state]')).toHaveAttribute('data-save-state', 'saved');
  await expect(page.getByRole('group', { name: 'Open files' }).getByRole('button', { name: 'main.py', exact: true })).toBeVisible();
  expect((await alice.file(task.id, 'main.py')).text).toBe('print("autosaved")\n');
});

test('rename and move a folder, by the dialog and by drag and drop', async ({ page }) => {
  const alice = await Api.as('alice');
  const task = await alice.createTask(unique('moves'), { 'src/a.py': 'A = 1\n', 'lib/b.py': 'B = 2\n' });
  await login(page, 'alice');
  await openTask(page, task.id);

  await page.locator('[data-path="src"]').click();
  await page.getByRole('button', { name: 'Rename / move' }).click();
  const dialog = page.getByRole('dialog', { name: 'Rename or move' });
  await dialog.getByLabel('New path').fill('source');
  await dialog.getByRole('button', { name: 'Move' }).click();
  await expect(page.locator('[data-path="source/a.py"]')).toBeVisible();
  expect(await alice.paths(task.id)).toEqual(['README.md', 'lib/b.py', 'main.py', 'source/a.py']);

  await page.locator('[data-path="source"]').dragTo(page.locator('[data-path="lib"]'));
  await expect(page.locator('[data-path="lib/source/a.py"]')).toBeVisible();
  expect(await alice.paths(task.id)).toEqual(['README.md', 'lib/b.py', 'lib/source/a.py', 'main.py']);
  expect((await alice.file(task.id, 'lib/source/a.py')).text).toBe('A = 1\n');
});

test('a refused file name shows its reason under the name and stores nothing', async ({ page }) => {
  const alice = await Api.as('alice');
  const task = await alice.createTask(unique('refused'));
  const before = await alice.paths(task.id);
  await login(page, 'alice');
  await openTask(page, task.id);
  await page.getByRole('button', { name: 'New file' }).click();
  const dialog = page.getByRole('dialog', { name: 'New file' });
  await dialog.getByLabel(/Name/).fill('bad\\name.py');
  await dialog.getByRole('button', { name: 'Create' }).click();
  const error = dialog.locator('#path-error');
  await expect(error).toContainText('backslash');
  await expect(dialog.getByLabel(/Name/)).toHaveAttribute('aria-describedby', 'path-error');
  expect(await alice.paths(task.id)).toEqual(before);
});

test('deleting a file asks first, and the main file is refused with the reason', async ({ page }) => {
  const alice = await Api.as('alice');
  const task = await alice.createTask(unique('delete'), { 'extra.py': 'x = 1\n' });
  await login(page, 'alice');
  await openTask(page, task.id);
  await page.locator('[data-path="extra.py"]').click();
  await page.getByRole('button', { name: 'Delete', exact: true }).click();
  let dialog = page.getByRole('dialog', { name: 'Delete file' });
  await dialog.getByRole('button', { name: 'Delete' }).click();
  await expect(page.locator('[data-path="extra.py"]')).toHaveCount(0);
  expect(await alice.paths(task.id)).toEqual(['README.md', 'main.py']);

  await page.locator('[data-path="main.py"]').click();
  await page.getByRole('button', { name: 'Delete', exact: true }).click();
  dialog = page.getByRole('dialog', { name: 'Delete file' });
  await dialog.getByRole('button', { name: 'Delete' }).click();
  await expect(dialog.getByRole('alert')).toContainText(/main/i);
  expect(await alice.paths(task.id)).toEqual(['README.md', 'main.py']);
});

test('the workspace is accessible in light and dark, and Escape then Tab leaves the editor', async ({ page }) => {
  const alice = await Api.as('alice');
  const task = await alice.createTask(unique('a11y workspace'));
  await login(page, 'alice');
  await openTask(page, task.id);
  await checkA11y(page, 'workspace');
  await page.locator('.cm-content').click();
  await page.keyboard.press('Escape');
  await page.keyboard.press('Tab');
  await expect(page.locator('.cm-content')).not.toBeFocused();
});

test('files dropped from the computer onto a folder are uploaded into it', async ({ page }) => {
  const alice = await Api.as('alice');
  const task = await alice.createTask(unique('upload'), { 'data/keep.txt': 'keep\n' });
  await login(page, 'alice');
  await openTask(page, task.id);
  const dropped = await page.evaluateHandle(() => {
    const dt = new DataTransfer();
    dt.items.add(new File(['print("uploaded")\n'], 'up.py', { type: 'text/x-python' }));
    dt.items.add(new File(['1,2,3\n'], 'table.csv', { type: 'text/csv' }));
    return dt;
  });
  await page.locator('[data-path="data"]').dispatchEvent('drop', { dataTransfer: dropped });
  await expect(page.locator('[data-path="data/up.py"]')).toBeVisible();
  expect(await alice.paths(task.id)).toEqual(['README.md', 'data/keep.txt', 'data/table.csv', 'data/up.py', 'main.py']);
  expect((await alice.file(task.id, 'data/up.py')).text).toBe('print("uploaded")\n');
});

test('one file and the whole task download', async ({ page }) => {
  const alice = await Api.as('alice');
  const task = await alice.createTask(unique('download'), { 'main.py': 'print("download me")\n' });
  await login(page, 'alice');
  await openTask(page, task.id);
  await page.locator('[data-path="main.py"]').click();
  const [file] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Download file' }).click()]);
  expect(file.suggestedFilename()).toBe('main.py');
  const [zip] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Download zip' }).click()]);
  expect(zip.suggestedFilename()).toMatch(/\.zip$/);
  const chunks: Buffer[] = [];
  for await (const c of (await zip.createReadStream())!) chunks.push(c as Buffer);
  // A zip starts with a local file header.
  expect(Buffer.concat(chunks).subarray(0, 4).toString('hex')).toBe('504b0304');
});
