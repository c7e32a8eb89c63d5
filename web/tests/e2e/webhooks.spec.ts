import { readFileSync } from 'node:fs';
import { test, expect, login, Api, checkA11y, screenshot, unique } from './helpers';

// The status-callback routes, as the committed API contract lists them.
const contract = JSON.parse(readFileSync(new URL('../../openapi.json', import.meta.url), 'utf8'));
const hasWebhooks = !!contract.paths['/api/v1/webhooks']?.post;

// bob's endpoints only: alice's runs in the other specs stay without callbacks.
const USER = 'bob';

async function clearEndpoints(api: Api) {
  const page = await api.json('GET', '/webhooks?per_page=100');
  for (const w of page.items) await api.json('DELETE', `/webhooks/${w.id}`);
}

test('register an endpoint, see its secret once, find it listed, delete it; a refused address says why', async ({ page, context, baseURL }) => {
  test.skip(!hasWebhooks, 'the API contract has no callbacks yet');
  const bob = await Api.as(USER);
  await clearEndpoints(bob);
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: baseURL });

  await login(page, USER);
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Callbacks' }).click();
  await expect(page).toHaveURL(/\/callbacks$/);
  await expect(page.getByRole('heading', { name: 'Status callbacks' })).toBeVisible();
  await expect(page.getByText('No endpoints yet.')).toBeVisible();
  await checkA11y(page, 'callbacks, empty');

  await page.getByRole('button', { name: 'New endpoint' }).click();
  const form = page.getByRole('dialog', { name: 'New callback endpoint' });
  await expect(form.getByRole('checkbox', { name: /Run status/ })).toBeChecked();
  // What the page can tell is said before anything is sent.
  await form.getByRole('checkbox', { name: /Run status/ }).uncheck();
  await form.getByLabel('URL').fill('https://hooks.example.org/coderun');
  await form.getByRole('button', { name: 'Register' }).click();
  await expect(form.getByRole('alert')).toHaveText('Choose at least one event.');
  // The server refuses a private address (here the cloud metadata one) with a 422 saying why.
  await form.getByRole('checkbox', { name: /Run status/ }).check();
  await form.getByLabel('URL').fill('http://169.254.169.254/latest/meta-data');
  await form.getByRole('button', { name: 'Register' }).click();
  await expect(form.getByRole('alert')).toContainText('169.254.169.254 is a loopback, private or reserved address');
  await checkA11y(page, 'new endpoint dialog with a refusal');
  expect((await bob.json('GET', '/webhooks')).total).toBe(0);

  const url = `https://hooks.example.org/coderun?team=${unique('t').split(' ')[1]}`;
  await form.getByLabel('URL').fill(url);
  await form.getByRole('checkbox', { name: /Approval requested/ }).check();
  await form.getByRole('button', { name: 'Register' }).click();

  // The secret, once, with the warning and a working Copy button.
  const shown = page.getByRole('dialog', { name: 'Endpoint registered' });
  const field = shown.getByRole('textbox', { name: 'Signing secret' });
  await expect(field).toHaveValue(/^whsec_[A-Za-z0-9+/]{43}=$/);
  const secret = await field.inputValue();
  await expect(shown.getByText('You will not see this secret again.')).toBeVisible();
  await shown.getByRole('button', { name: 'Copy' }).click();
  await expect(shown.getByRole('status')).toHaveText('Copied to the clipboard.');
  expect(await page.evaluate(() => navigator.clipboard.readText())).toBe(secret);
  await screenshot(page, 'webhooks-secret');
  await checkA11y(page, 'secret dialog');
  await shown.getByRole('button', { name: 'I have saved the secret' }).click();
  await expect(shown).toBeHidden();

  // Listed with its events and state, and the secret nowhere, now or after a reload.
  const list = page.getByRole('list', { name: 'Callback endpoints' });
  const item = list.getByRole('listitem').filter({ hasText: url });
  await expect(item).toContainText('Run status, Approval requested');
  await expect(item).toContainText('Active');
  expect(await page.content()).not.toContain(secret);
  await page.reload();
  await expect(item).toBeVisible();
  expect(await page.content()).not.toContain(secret);
  const stored = await bob.json('GET', '/webhooks');
  expect(stored.items.map((w: any) => [w.url, w.events])).toEqual([[url, ['run.status', 'approval.requested']]]);
  await screenshot(page, 'webhooks-list');
  await checkA11y(page, 'callbacks');

  // Delete, after a confirmation.
  await item.getByRole('button', { name: `Delete ${url}` }).click();
  const confirm = page.getByRole('dialog', { name: 'Delete endpoint' });
  await confirm.getByRole('button', { name: 'Cancel' }).click();
  await expect(item).toBeVisible();
  await item.getByRole('button', { name: `Delete ${url}` }).click();
  await confirm.getByRole('button', { name: 'Delete' }).click();
  await expect(page.getByText('No endpoints yet.')).toBeVisible();
  expect((await bob.json('GET', '/webhooks')).total).toBe(0);
});

test("an endpoint's deliveries show their attempts, and one can be resent", async ({ page }) => {
  test.skip(!hasWebhooks, 'the API contract has no callbacks yet');
  const bob = await Api.as(USER);
  await clearEndpoints(bob);
  // `localhost` passes registration (a name, checked when sending); the worker then finds it
  // resolves to loopback only, which the stack refuses, and records a failed attempt at once.
  const url = 'http://localhost:9/coderun-hook';
  const endpoint = await bob.json('POST', '/webhooks', { url, events: ['run.status'] });
  const task = await bob.createTask(unique('callback'), { 'main.py': 'print("hello")\n' });
  const run = await bob.json('POST', `/tasks/${task.id}/runs`, {});
  await bob.settle(task.id);

  await login(page, USER, '/callbacks');
  await page.getByRole('link', { name: url }).click();
  await expect(page).toHaveURL(new RegExp(`/callbacks/${endpoint.id}$`));
  await expect(page.getByRole('heading', { name: url, level: 1 })).toBeVisible();
  await expect(page.getByText('Run status', { exact: true }).first()).toBeVisible();

  // One delivery per status change of the run, each tried at once. The stack refuses loopback,
  // so each fails for good; were loopback allowed, port 9 would refuse and they would wait
  // for a retry: nothing below depends on which.
  const deliveries = page.getByRole('list', { name: 'Deliveries' }).getByRole('listitem');
  const listed = () => bob.json('GET', `/webhooks/${endpoint.id}/deliveries`);
  await expect.poll(async () => (await listed()).items.every((d: any) => d.attempts.length > 0), { timeout: 30_000 }).toBe(true);
  await page.getByRole('button', { name: 'Refresh' }).click();
  const api = await listed();
  expect(api.total).toBeGreaterThanOrEqual(2);
  expect(api.items.every((d: any) => d.type === 'run.status' && d.subject === run.id)).toBe(true);
  await expect(deliveries).toHaveCount(api.total);
  const first = api.items[0];
  const newest = deliveries.first();
  await expect(newest).toContainText(first.status);
  await expect(newest).toContainText(`${first.attempts.length} attempt`);
  await expect(newest).toContainText(`about run ${run.id}`);
  await expect(newest).toContainText(first.attempts.at(-1).error);
  await newest.getByText('Attempts', { exact: true }).click();
  const attempts = newest.getByRole('table', { name: `Attempts of Run status #${first.sequence}` });
  await expect(attempts.getByRole('row')).toHaveCount(1 + first.attempts.length);
  await expect(attempts).toContainText('localhost');
  await screenshot(page, 'webhooks');
  await checkA11y(page, 'deliveries');

  // Resend: the delivery goes back to pending and gets another attempt, listed after the others.
  await newest.getByRole('button', { name: `Resend Run status #${first.sequence}` }).click();
  await expect
    .poll(async () => (await listed()).items.find((d: any) => d.id === first.id).attempts.length, { timeout: 20_000 })
    .toBeGreaterThan(first.attempts.length);
  const after = (await listed()).items.find((d: any) => d.id === first.id);
  await page.getByRole('button', { name: 'Refresh' }).click();
  const resent = deliveries.filter({ hasText: `Event #${first.sequence} about` });
  await expect(resent).toContainText(`${after.attempts.length} attempts`);
  // Its attempts stay open across the refreshes.
  await expect(resent.getByRole('table').getByRole('row')).toHaveCount(1 + after.attempts.length);

  // A disabled endpoint (20 failures over a day, too slow to bring about here: the list answer
  // is altered in the browser) shows why, and its deliveries cannot be resent.
  const reason = 'disabled after 20 failed attempts in a row over at least 86400 s; the last: answered 500';
  const listing = (u: URL) => u.pathname === '/api/v1/webhooks';
  await page.route(listing, async (route) => {
    const real = await route.fetch();
    const body = await real.json();
    for (const w of body.items) if (w.id === endpoint.id) Object.assign(w, { disabled_at: new Date().toISOString(), disabled_reason: reason });
    await route.fulfill({ response: real, json: body });
  });
  await page.reload();
  await expect(page.getByRole('note')).toContainText('Disabled after 20 failed attempts in a row over at least 86400 s; the last: answered 500');
  await expect(deliveries.first().getByRole('button', { name: /^Resend/ })).toBeDisabled();
  await checkA11y(page, 'disabled endpoint');
  await page.getByRole('link', { name: '← Callbacks' }).click();
  const item = page.getByRole('list', { name: 'Callback endpoints' }).getByRole('listitem').filter({ hasText: url });
  await expect(item).toContainText('Disabled after 20 failed attempts in a row over at least 86400 s; the last: answered 500');
  await item.getByRole('button', { name: `Register ${url} again` }).click();
  const again = page.getByRole('dialog', { name: 'Register the endpoint again' });
  await expect(again.getByLabel('URL')).toHaveValue(url);
  await expect(again.getByRole('checkbox', { name: /Run status/ })).toBeChecked();
  await expect(again.getByRole('checkbox', { name: /Pipeline run status/ })).not.toBeChecked();
  await again.getByRole('button', { name: 'Cancel' }).click();
  await page.unroute(listing);

  // Deleting from its own page goes back to the list.
  await item.getByRole('link', { name: url }).click();
  await page.getByRole('button', { name: 'Delete' }).click();
  await page.getByRole('dialog', { name: 'Delete endpoint' }).getByRole('button', { name: 'Delete' }).click();
  await expect(page).toHaveURL(/\/callbacks$/);
  await expect(page.getByText('No endpoints yet.')).toBeVisible();
});

test('an endpoint of someone else, or none, is not found', async ({ page }) => {
  test.skip(!hasWebhooks, 'the API contract has no callbacks yet');
  const alice = await Api.as('alice');
  const theirs = await alice.json('POST', '/webhooks', { url: 'https://hooks.example.org/alice', events: ['run.status'] });
  try {
    await login(page, USER, `/callbacks/${theirs.id}`);
    await expect(page.getByRole('heading', { name: 'Not found' })).toBeVisible();
  } finally {
    await alice.json('DELETE', `/webhooks/${theirs.id}`);
  }
});
