import { test, expect, login, Api, checkA11y, unique, users } from './helpers';

test('a student logs in, stays logged in across a reload, and logs out', async ({ page }) => {
  await login(page, 'alice');
  await expect(page.getByRole('heading', { name: 'Your tasks' })).toBeVisible();
  await page.reload();
  await expect(page.getByRole('heading', { name: 'Your tasks' })).toBeVisible();
  await page.getByRole('button', { name: 'Log out' }).click();
  await expect(page.getByRole('heading', { name: 'Log in to coderun' })).toBeVisible();
  await page.reload();
  await expect(page.getByRole('heading', { name: 'Log in to coderun' })).toBeVisible();
});

test('a wrong password is refused with the reason and nobody is logged in', async ({ page }) => {
  await page.goto('/');
  await page.getByLabel('Username').fill('alice');
  await page.getByLabel('Password').fill('not-her-password');
  await page.getByRole('button', { name: 'Log in' }).click();
  await expect(page.getByRole('alert')).toContainText(/unauthori[sz]ed|credentials|password/i);
  await expect(page.getByRole('button', { name: 'Log out' })).toHaveCount(0);
});

test('a deep link asks for a login and then opens what it named', async ({ page }) => {
  const alice = await Api.as('alice');
  const task = await alice.createTask(unique('deep link'));
  await login(page, 'alice', `/tasks/${task.id}`);
  await expect(page).toHaveURL(new RegExp(`/tasks/${task.id}`));
  await expect(page.locator('.cm-content')).toBeVisible();
});

test('a refused token returns to the login page, which comes back to where it was', async ({ page }) => {
  const alice = await Api.as('alice');
  const task = await alice.createTask(unique('expired'));
  await page.goto('/login');
  await page.evaluate(() =>
    localStorage.setItem(
      'coderun.session',
      JSON.stringify({ token: 'not-a-valid-token', expires_at: new Date(Date.now() + 3600_000).toISOString(), user: { id: 'x', username: 'alice', role: 'student' } }),
    ),
  );
  await page.goto(`/tasks/${task.id}`);
  await expect(page.getByRole('heading', { name: 'Log in to coderun' })).toBeVisible();
  await expect(page).toHaveURL(/\/login\?next=/);
  await page.getByLabel('Username').fill('alice');
  await page.getByLabel('Password').fill(users().alice);
  await page.getByRole('button', { name: 'Log in' }).click();
  await expect(page).toHaveURL(new RegExp(`/tasks/${task.id}$`));
  await expect(page.locator('.cm-content')).toBeVisible();
});

test('the login view is accessible in light and dark', async ({ page }) => {
  await page.goto('/login');
  await expect(page.getByRole('heading', { name: 'Log in to coderun' })).toBeVisible();
  await checkA11y(page, 'login');
});
