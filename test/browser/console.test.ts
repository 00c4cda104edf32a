import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import t from 'tap';
import { startServer, TOKEN, type TestServer } from '../helpers/server.js';
import { requireTools, ROOT } from '../helpers/tools.js';
import { waitFor } from '../helpers/wait.js';

/**
 * The web console in a real browser (Debian's chromium through
 * playwright-core) against a real `blockgate serve`: log-in, every view,
 * the actions, live I/O under fio, the accessibility pass, log-out, and a
 * seeded appliance of 1,000 volumes and 200 hosts.
 */

const CHROMIUM = '/usr/bin/chromium';
const SHOTS = path.join(ROOT, '.tap/screenshots');
/** Generous deadlines for a loaded machine: hang guards, never timing assertions. */
const SLOW = 120_000;

try {
  requireTools('chromium', 'fio');
} catch {
  /* checked below */
}
if (!fs.existsSync(CHROMIUM)) {
  t.test('the web console in chromium', { skip: `${CHROMIUM} is not installed and test/setup-tools.sh could not install it` }, () => undefined);
} else {
  await main();
}

async function shot(page: Page, name: string): Promise<void> {
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, `console-${name}.png`), fullPage: true });
}

async function view(page: Page, name: string): Promise<void> {
  await page.evaluate(`location.hash = '#${name}'`);
  await page.waitForSelector(`main[data-view="${name}"][data-ready="1"]`, { timeout: SLOW });
}

/** Serious and critical axe-core findings on the page as it is now. */
async function axeFindings(page: Page): Promise<string[]> {
  if (!(await page.evaluate('typeof window.axe !== "undefined"'))) await page.addScriptTag({ path: path.join(ROOT, 'node_modules/axe-core/axe.min.js') });
  const found = (await page.evaluate(`axe.run(document, { resultTypes: ['violations'] }).then(r => r.violations.map(v => ({ id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 3) })))`)) as {
    id: string;
    impact: string;
    nodes: string[];
  }[];
  return found.filter((v) => v.impact === 'serious' || v.impact === 'critical').map((v) => `${v.id} (${v.impact}) at ${v.nodes.join(', ')}`);
}

/** Fills and confirms the action dialog. */
async function confirm(page: Page, fields: Record<string, string> = {}): Promise<void> {
  await page.waitForSelector('dialog#ask[open]', { timeout: SLOW });
  for (const [k, v] of Object.entries(fields)) {
    const el = page.locator(`#ask-${k}`);
    if ((await el.evaluate((e) => e.tagName)) === 'SELECT') await el.selectOption(v);
    else await el.fill(v);
  }
  await page.click('#ask-ok');
  await page.locator('dialog#ask').waitFor({ state: 'hidden', timeout: SLOW });
}

async function volumeState(page: Page, name: string, state: string): Promise<void> {
  await page.waitForSelector(`tr[data-volume="${name}"][data-state="${state}"]`, { timeout: SLOW });
}

async function main(): Promise<void> {
  let browser: Browser | null = null;
  t.teardown(async () => {
    await browser?.close();
  });
  const s: TestServer = await startServer(t);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  // bypassCSP only so the test can inject axe-core; the page itself runs under the console's CSP.
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, bypassCSP: true });
  const page = await context.newPage();
  const pageErrors: string[] = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  const a11y: string[] = [];
  const check = async (name: string): Promise<void> => {
    for (const f of await axeFindings(page)) a11y.push(`${name}: ${f}`);
  };

  await t.test('a wrong token is refused and no session is given', async (t) => {
    await page.goto(`${s.api}/`);
    await page.waitForSelector('form#login', { timeout: SLOW });
    await check('login');
    await shot(page, 'login');
    await page.fill('#token', 'not-the-token');
    await page.click('form#login button[type=submit]');
    await page.waitForFunction(`document.getElementById('flash').textContent.includes('wrong API token')`, undefined, { timeout: SLOW });
    t.ok(await page.isVisible('form#login'), 'still at the log-in form');
    t.same((await context.cookies()).filter((c) => c.name === 'blockgate_session'), [], 'no session cookie');
    // The bearer-token API is unchanged: no token, no data.
    t.equal((await s.request('GET', '/v1/volumes', undefined, null)).status, 401);
  });

  await t.test('log in: the token becomes an httpOnly SameSite=Strict cookie, nowhere else', async (t) => {
    await page.fill('#token', TOKEN);
    await page.click('form#login button[type=submit]');
    await view(page, 'overview');
    const cookies = await context.cookies();
    const session = cookies.find((c) => c.name === 'blockgate_session');
    t.ok(session, 'session cookie set');
    t.equal(session?.httpOnly, true, 'httpOnly');
    t.equal(session?.sameSite, 'Strict', 'SameSite=Strict');
    t.not(session?.value, TOKEN, 'the cookie is a session id, not the token');
    const visible = (await page.evaluate(`JSON.stringify([location.href, document.cookie, Object.entries(localStorage), Object.entries(sessionStorage), document.documentElement.outerHTML])`)) as string;
    t.notOk(visible.includes(TOKEN), 'the token is in no URL, cookie the page reads, storage or markup');
    t.notOk(visible.includes(session!.value), 'the session id is not readable by the page');
    // A change without the CSRF header is refused even with the cookie.
    const noCsrf = (await page.evaluate(`fetch('/v1/volumes', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'csrf-probe', size: '1M' }) }).then(async r => [r.status, await r.text()])`)) as [number, string];
    t.equal(noCsrf[0], 401, 'a change without the CSRF token is refused');
    t.match(noCsrf[1], /CSRF/);
    t.equal((await s.request('GET', '/v1/volumes/csrf-probe')).status, 404, 'and nothing was created');
  });

  await t.test('overview shows health and arrays', async (t) => {
    t.equal(await page.textContent('#health'), 'ok');
    t.ok(await page.isVisible('text=array0'), 'the demo array is listed');
    await page.waitForSelector('#iops-now', { timeout: SLOW });
    await check('overview');
    await shot(page, 'overview');
  });

  await t.test('hosts: the demo host and its unit', async (t) => {
    await view(page, 'hosts');
    await page.click('tr[data-host="demo"] button');
    const unit = page.locator('#units tr[data-unit="0/0"]');
    await unit.waitFor({ timeout: SLOW });
    t.match(await unit.textContent(), /demo-boot/, 'unit 0/0 is the demo volume');
    t.match(await unit.textContent(), /nbd\+unix:/, 'with its URI');
    await check('hosts');
    await shot(page, 'hosts');
  });

  await t.test('volumes: create, the API error shown, bind and map, resize, snapshot, cache policy', async (t) => {
    await view(page, 'volumes');
    await page.click('#create-volume');
    await confirm(page, { name: 'web', size: '64M' });
    await volumeState(page, 'web', 'configured');
    const row = page.locator('tr[data-volume="web"]');
    t.match(await row.textContent(), /write-back/, 'cache policy shown');
    // The same name again: the API refuses, and the console shows its message.
    await page.click('#create-volume');
    await confirm(page, { name: 'web', size: '64M' });
    await page.waitForFunction(`document.getElementById('flash').textContent.startsWith('CONFLICT')`, undefined, { timeout: SLOW });
    t.match(await page.textContent('#flash'), /web/, "the API's message names the volume");
    // Cancelling a confirmation does nothing.
    await row.locator('button[data-op="break"]').click();
    await page.click('dialog#ask button[value=cancel]');
    await page.locator('dialog#ask').waitFor({ state: 'hidden', timeout: SLOW });
    await volumeState(page, 'web', 'configured');

    await row.locator('button[data-op="bind"]').click();
    await confirm(page, { host: 'demo', target: '0', lun: '1', map: 'yes' });
    await volumeState(page, 'web', 'mapped');
    const ns = await s.call('GET', '/v1/hosts/demo/namespace');
    t.ok(ns.units.some((u: { volume: string; lun: number }) => u.volume === 'web' && u.lun === 1), 'the unit is in the host namespace');

    await row.locator('button[data-op="resize"]').click();
    await confirm(page, { size: '96M' });
    await page.waitForFunction(`document.querySelector('tr[data-volume="web"]').textContent.includes('96.0 MiB')`, undefined, { timeout: SLOW });
    t.equal((await s.call('GET', '/v1/volumes/web')).size, 96 * 1024 * 1024, 'resized through the API');
    // A snapshot of the demo volume (web is scrubbed next, which its snapshot's origin could not be).
    await page.locator('tr[data-volume="demo-boot"] button[data-op="snap"]').click();
    await confirm(page, { snapshot: 'boot-snap' });
    await page.waitForSelector('tr[data-volume="boot-snap"]', { timeout: SLOW });
    t.equal((await s.call('GET', '/v1/volumes/boot-snap')).snapshotOf, 'demo-boot', 'the snapshot is of demo-boot');
    await row.locator('button[aria-label^="Cache policy"]').click();
    await confirm(page, { policy: 'write-through' });
    await page.waitForFunction(`document.querySelector('tr[data-volume="web"]').textContent.includes('write-through')`, undefined, { timeout: SLOW });
    t.equal((await s.call('GET', '/v1/volumes/web')).cachePolicy, 'write-through', 'saved through the API');
    await check('volumes');
    await shot(page, 'volumes');
  });

  await t.test('scrub: unmap, unbind, scrub, and watch the job reach 100 %', async (t) => {
    const row = page.locator('tr[data-volume="web"]');
    await row.locator('button[data-op="unmap"]').click();
    await confirm(page);
    await volumeState(page, 'web', 'unmapped');
    await row.locator('button[data-op="unbind"]').click();
    await confirm(page);
    await volumeState(page, 'web', 'unbound');
    await row.locator('button[data-op="scrub"]').click();
    await confirm(page, { pattern: '0' });
    await view(page, 'jobs');
    const job = page.locator('tr[data-kind="scrub"]').first();
    await job.waitFor({ timeout: SLOW });
    await page.waitForSelector('tr[data-kind="scrub"][data-state="succeeded"] [data-percent="100"]', { timeout: SLOW });
    t.match(await job.textContent(), /100 %/, 'the progress bar reached 100 %');
    await check('jobs');
    await shot(page, 'jobs');
  });

  await t.test('live I/O moves while fio writes', async (t) => {
    await view(page, 'overview');
    const before = Number(await page.getAttribute('#ops-total', 'data-value'));
    const fio = spawn(
      'fio',
      ['--name=console', '--ioengine=nbd', `--uri=${s.unixUri('demo', '0/0')}`, '--rw=randwrite', '--bs=4k', '--size=64M', '--iodepth=8', '--time_based', '--runtime=300', `--aux-path=${s.dataDir}`, '--verify_state_save=0'],
      { stdio: 'ignore' },
    );
    t.teardown(() => {
      if (fio.exitCode === null) fio.kill('SIGKILL');
    });
    const iops = await waitFor(
      'IOPS above zero',
      async () => {
        const v = Number(await page.getAttribute('#iops-now', 'data-value'));
        return v > 0 ? v : undefined;
      },
      SLOW,
    );
    t.ok(iops > 0, `the console shows ${iops} IOPS`);
    await page.waitForSelector('#top-volumes th:has-text("demo → demo-boot")', { timeout: SLOW });
    await shot(page, 'overview-io');
    fio.kill('SIGTERM');
    t.ok(Number(await page.getAttribute('#ops-total', 'data-value')) > before, 'the request counter grew');
  });

  await t.test('events arrive live over SSE', async (t) => {
    await view(page, 'events');
    await page.waitForSelector('#event-list li:has-text("job.succeeded")', { timeout: SLOW });
    await s.call('POST', '/v1/volumes', { name: 'evt-probe', size: '1M' });
    await page.waitForSelector('#event-list li:has-text("evt-probe")', { timeout: SLOW });
    t.pass('an event made through the API appears without a reload');
    await check('events');
    await shot(page, 'events');
  });

  await t.test('topology draws the host → unit → volume → extent → array graph', async (t) => {
    await view(page, 'topology');
    const n = await waitFor('graph nodes', async () => {
      const v = Number(await page.getAttribute('#cy', 'data-nodes'));
      return v > 0 ? v : undefined;
    });
    t.ok(n >= 5, `${n} nodes drawn`);
    await page.waitForSelector('#cy canvas', { timeout: SLOW });
    await check('topology');
    await shot(page, 'topology');
  });

  await t.test('1,000 volumes and 200 hosts render, paginated', async (t) => {
    await s.call('POST', '/v1/arrays', { name: 'scale', size: '4G' });
    const work: (() => Promise<unknown>)[] = [];
    for (let i = 0; i < 1000; i++) work.push(() => s.call('POST', '/v1/volumes', { name: `scale-${String(i).padStart(4, '0')}`, size: '1M' }));
    for (let i = 0; i < 200; i++) work.push(() => s.call('POST', '/v1/hosts', { name: `h-${String(i).padStart(3, '0')}` }));
    const lanes = Array.from({ length: 8 }, async () => {
      for (let w = work.shift(); w; w = work.shift()) await w();
    });
    await Promise.all(lanes);
    await view(page, 'volumes');
    await page.waitForFunction(`[...document.querySelectorAll('[data-rows]')].some(e => Number(e.dataset.rows) >= 1000)`, undefined, { timeout: SLOW });
    t.ok((await page.locator('tbody tr').count()) <= 50, 'one page of rows in the DOM');
    await page.fill('#filter-volumes', 'scale-0999');
    await page.waitForSelector('tr[data-volume="scale-0999"]', { timeout: SLOW });
    t.equal(await page.locator('tbody tr').count(), 1, 'the filter finds one volume among 1,000');
    await shot(page, 'volumes-1000');
    await view(page, 'hosts');
    await page.waitForFunction(`[...document.querySelectorAll('[data-rows]')].some(e => Number(e.dataset.rows) >= 201)`, undefined, { timeout: SLOW });
    await page.click('button:has-text("Next")');
    await page.waitForSelector('text=page 2 of 5', { timeout: SLOW });
    await shot(page, 'hosts-200');
    await view(page, 'topology');
    await page.waitForSelector('#cy canvas', { timeout: SLOW });
    t.match(await page.textContent('#graph-note'), /first 400/, 'a large graph is cut down and says so');
    t.pass('every view rendered at scale');
  });

  await t.test('log out: the session is gone', async (t) => {
    await page.click('#logout');
    await page.waitForSelector('form#login', { timeout: SLOW });
    const status = await page.evaluate(`fetch('/v1/volumes').then(r => r.status)`);
    t.equal(status, 401, 'the old cookie no longer opens the API');
    t.same(
      (await context.cookies()).filter((c) => c.name === 'blockgate_session' && c.value !== ''),
      [],
      'the cookie is cleared',
    );
  });

  t.same(a11y, [], 'axe-core: no serious or critical accessibility violations on any view');
  t.same(pageErrors, [], 'no script errors on the page');
}
