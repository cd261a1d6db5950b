// The web console in headless Chromium (Debian's, driven by Playwright), against a
// running gateway the caller prepared: a user signs in, submits and watches the task
// reach DONE without a reload, with its image drawn; an admin drains an instance,
// pauses the queue, bulk-cancels a filtered set and reads the audit log. No page may
// log a console error. A screenshot of every page lands in SCREENSHOTS.
//
// Environment: BASE_URL, CHROMIUM (the browser), SCREENSHOTS (a directory),
// USER_NAME / ADMIN_NAME / PASSWORD (accounts that exist), OTHER_TOKEN (a second user's
// token, whose queued tasks are cancelled), DRAIN_URL (an instance to drain).

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const base = env('BASE_URL');
const shots = env('SCREENSHOTS');
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: env('CHROMIUM'),
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
const errors = [];
const steps = [];
const pages = [];

async function step(name, run) {
  const started = Date.now();
  try {
    await run();
  } catch (error) {
    // What each page looked like, and what it logged, for the failure's report.
    await Promise.all(pages.map((page, i) => page.screenshot({ path: join(shots, `failed-${i}.png`), fullPage: true }).catch(() => {})));
    console.log(`failed: ${name}\nconsole errors so far:\n${errors.join('\n')}`);
    throw error;
  }
  steps.push(`${name} (${Date.now() - started} ms)`);
  console.log(`ok: ${name}`);
}

async function newPage(viewport = { width: 1280, height: 860 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  pages.push(page);
  page.on('console', (message) => {
    if (message.type() === 'error') errors.push(`${page.url()}: ${message.text()}`);
  });
  page.on('pageerror', (error) => errors.push(`${page.url()}: ${error.message}`));
  return page;
}

async function signIn(page, username) {
  await page.goto(`${base}/console`);
  await page.fill('input[name=username]', username);
  await page.fill('input[name=password]', env('PASSWORD'));
  await page.click('form[data-form=login] button[type=submit]');
  await page.waitForSelector('#who button');
}

async function shot(page, name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

async function api(method, path, token) {
  const response = await fetch(`${base}${path}`, { method, headers: { Authorization: `Bearer ${token}` } });
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status}`);
  return response.json();
}

try {
  const user = await newPage();
  await step('a user signs in, submits, and sees DONE with the image drawn, without a reload', async () => {
    await signIn(user, env('USER_NAME'));
    await user.waitForSelector('form[data-form=submit]');
    await user.evaluate(() => { window.notReloaded = true; });
    await user.fill('textarea[name=prompt]', 'a lighthouse at dawn, seen from the cliffs, long exposure');
    await user.click('form[data-form=submit] button[type=submit]');
    await user.waitForFunction(() => {
      const row = document.querySelector('li.task');
      const img = row && row.querySelector('img');
      return row && row.querySelector('.badge.done') && img && img.complete && img.naturalWidth > 0;
    });
    if (!(await user.evaluate(() => window.notReloaded === true))) throw new Error('the page reloaded');
    await shot(user, 'submit');
  });
  await step('the gallery shows the image', async () => {
    await user.goto(`${base}/console#/gallery`);
    await user.waitForFunction(() => {
      const img = document.querySelector('.gallery img');
      return img && img.complete && img.naturalWidth > 0;
    });
    await shot(user, 'gallery');
  });
  await step('speech: an upload is transcribed', async () => {
    await user.goto(`${base}/console#/speech`);
    await user.setInputFiles('input[name=file]', {
      name: 'hello.pcm', mimeType: 'audio/wav', buffer: Buffer.alloc(96000),
    });
    await user.click('form[data-form=speech] button[type=submit]');
    await user.waitForSelector('[data-list=transcript] p');
    await shot(user, 'speech');
  });
  await step('on a phone the submit page fits', async () => {
    const phone = await newPage({ width: 390, height: 844 });
    await signIn(phone, env('USER_NAME'));
    await phone.waitForSelector('li.task .badge.done');
    const overflow = await phone.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
    if (overflow) throw new Error('the page is wider than the phone');
    await shot(phone, 'submit-phone');
  });

  const admin = await newPage();
  await step('an admin drains an instance from the table and it leaves rotation', async () => {
    await signIn(admin, env('ADMIN_NAME'));
    await admin.goto(`${base}/console#/admin/instances`);
    const row = `tr[data-url="${env('DRAIN_URL')}"]`;
    await admin.waitForSelector(`${row} .badge.healthy`);
    await shot(admin, 'instances');
    await admin.click(`${row} button[data-action=drain]`);
    await admin.waitForSelector('#confirm[open]');
    await admin.click('#confirm-ok');
    await admin.waitForSelector(row, { state: 'detached' });
  });
  await step('the overview shows figures and charts, and the pause switch pauses', async () => {
    await admin.goto(`${base}/console#/admin`);
    await admin.waitForSelector('[data-chart=throughput] svg rect', { state: 'attached' });
    await admin.waitForSelector('[data-chart=depth] svg polyline', { state: 'attached' });
    await admin.check('input[name=paused]');
    await admin.waitForSelector('.notice.ok');
    const stats = await (await fetch(`${base}/api/v1/system/stats`)).json();
    if (!stats.paused) throw new Error('not paused');
    await shot(admin, 'overview');
  });
  await step('an admin bulk-cancels a filtered set, confirming the count', async () => {
    const other = env('OTHER_TOKEN');
    for (const prompt of ['bulk one', 'bulk two', 'bulk three']) {
      const response = await fetch(`${base}/api/v1/image/async`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${other}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ prompt }),
      });
      if (response.status !== 202) throw new Error(`submit: ${response.status}`);
    }
    await admin.goto(`${base}/console#/admin/tasks`);
    await admin.check('input[name=status-QUEUED]');
    await admin.fill('input[name=q]', 'bulk');
    await admin.click('form[data-form=task-filter] button[type=submit]');
    await admin.waitForFunction(() => document.querySelector('[data-total]').textContent === '3 matching');
    await admin.click('button[data-action=bulk-cancel]');
    // The count is asked for first; then the dialog opens.
    await admin.waitForFunction(() => document.getElementById('confirm').open
      && document.getElementById('confirm-text').textContent.startsWith('Cancel'));
    const asked = await admin.textContent('#confirm-text');
    if (asked !== 'Cancel 3 tasks?') throw new Error(`confirmation said: ${asked}`);
    await admin.click('#confirm-ok');
    await admin.waitForFunction(() => document.querySelector('.notice.ok')?.textContent === 'Cancelled 3');
    await admin.waitForFunction(() => document.querySelector('[data-total]').textContent === '0 matching');
    const cancelled = await api('GET', '/api/v1/admin/tasks?statuses=CANCELLED&q=bulk', env('ADMIN_TOKEN'));
    if (cancelled.total !== 3) throw new Error(`${cancelled.total} cancelled`);
    await admin.uncheck('input[name=status-QUEUED]');
    await admin.fill('input[name=q]', '');
    await admin.click('form[data-form=task-filter] button[type=submit]');
    await admin.waitForSelector('[data-list=tasks] tr[data-task]');
    await shot(admin, 'tasks');
  });
  await step('a task detail shows its events', async () => {
    await admin.click('[data-list=tasks] tr[data-task] a');
    await admin.waitForSelector('[data-list=events] li');
    await shot(admin, 'task');
  });
  await step('users and the audit log', async () => {
    await admin.goto(`${base}/console#/admin/users`);
    await admin.waitForSelector('[data-list=users] tr[data-user]');
    await shot(admin, 'users');
    await admin.goto(`${base}/console#/admin/audit`);
    await admin.waitForSelector('[data-list=audit] tr');
    const actions = await admin.$$eval('[data-list=audit] td.mono', (cells) => cells.map((c) => c.textContent));
    for (const action of ['tasks.cancel', 'queue.pause', 'instance.remove']) {
      if (!actions.includes(action)) throw new Error(`${action} not in the audit log: ${actions}`);
    }
    await shot(admin, 'audit');
  });
  if (errors.length) throw new Error(`console errors:\n${errors.join('\n')}`);
  console.log(`passed: ${steps.length} steps\n${steps.join('\n')}`);
} finally {
  await browser.close();
}
