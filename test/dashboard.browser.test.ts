// The web dashboard (issue 14) in a real headless Chromium (Debian's chromium, driven by
// playwright-core) against a real mxguard: mail goes in over SMTP, the page shows it, filters it,
// opens its trace, and shows a hostile HELO as text. The screenshot is left in test-output/.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { startTestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';

const TOKEN = 'dashboard-test-token-0123456789';
const CHROMIUM = process.env.MXGUARD_CHROMIUM ?? '/usr/bin/chromium';
// Without whitespace (the SMTP side refuses a HELO name with spaces), still markup if it were parsed.
const HOSTILE_HELO = '<img/src=x/onerror=alert(1)>';
const SHOT = path.resolve(import.meta.dirname, '../test-output/dashboard.png');

/** One transaction: EHLO, MAIL, RCPT, and DATA when RCPT was accepted; returns every reply. */
async function transaction(port: number, helo: string, from: string, rcpt: string, localAddress?: string): Promise<string[]> {
  const c = await RawClient.connect(port, '127.0.0.1', localAddress);
  try {
    const replies = [await c.reply()];
    c.send(`EHLO ${helo}\r\n`);
    replies.push(await c.reply());
    c.send(`MAIL FROM:<${from}>\r\n`);
    replies.push(await c.reply());
    c.send(`RCPT TO:<${rcpt}>\r\n`);
    const rcptReply = await c.reply();
    replies.push(rcptReply);
    if (rcptReply.startsWith('250')) {
      c.send('DATA\r\n');
      replies.push(await c.reply());
      c.send(`From: <${from}>\r\nTo: <${rcpt}>\r\nSubject: dashboard test\r\nMessage-ID: <${Date.now()}.${Math.random()}@dashboard.test>\r\n\r\nHello.\r\n.\r\n`);
      replies.push(await c.reply());
    }
    c.send('QUIT\r\n');
    replies.push(await c.reply());
    return replies;
  } finally {
    c.close();
  }
}

/** A raw GET (http.request sends the path as written; fetch would normalise `..` away). */
function rawGet(port: number, rawPath: string): Promise<{ status: number; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: rawPath }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers }));
    });
    req.on('error', reject);
  });
}

/** Debian's chromium, headless; closed after the test, pass or fail (--no-sandbox: tests run as root). */
async function launch(t: { after(fn: () => Promise<void>): void }): Promise<Browser> {
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
  t.after(() => browser.close());
  return browser;
}

/**
 * Polls until `cond` holds (bounded). Locators, not page.waitForFunction: that evaluates in the
 * page's own world, where the dashboard's CSP (rightly) forbids eval.
 */
async function until(what: string, cond: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Waits until the history table lists exactly these senders, in this order (newest first). */
async function showsSenders(page: Page, want: string[]): Promise<void> {
  let got: string[] = [];
  await until(`senders ${want.join(', ')}`, async () => {
    got = await page.locator('#history tbody td.sender').allTextContents();
    return got.join('|') === want.join('|');
  }).catch((err: Error) => {
    throw new Error(`${err.message}; the table shows ${JSON.stringify(got)}`);
  });
}
const statusMatches = (page: Page, re: RegExp) => until(`status ${re}`, async () => re.test((await page.locator('#status').textContent()) ?? ''));

test('dashboard: a real browser shows the mail just sent, filters it, opens its trace, and shows a hostile HELO as text', async (t) => {
  // Only 127.0.0.1 may relay (and so is waived from the HELO checks); 127.0.0.2 is a stranger.
  const app = await startTestApp({ admin: { listen: '127.0.0.1:0', token: TOKEN }, relay: { forward_from_ip: ['127.0.0.1'] } });
  t.after(() => app.stop());
  const adminPort = app.app.adminPort as number;
  const base = `http://127.0.0.1:${adminPort}`;

  // The page needs no token and carries a strict CSP; the data does need it.
  const page0 = await rawGet(adminPort, '/dashboard/');
  assert.equal(page0.status, 200);
  assert.match(String(page0.headers['content-security-policy']), /script-src 'self'/);
  assert.equal((await rawGet(adminPort, '/dashboard/../package.json')).status, 404);
  assert.equal((await rawGet(adminPort, '/dashboard/..%2f..%2fpackage.json')).status, 404);
  assert.equal((await fetch(`${base}/api/history`)).status, 401);

  const accepted = await transaction(app.port, 'good.client.test', 'alice@good.test', 'bob@example.test');
  assert.match(accepted.at(-2) as string, /^250 /, `accepted: ${JSON.stringify(accepted)}`);
  // helo.reject_invalid refuses the hostile name (answered at RCPT: smtp.delay_reject).
  const refused = await transaction(app.port, HOSTILE_HELO, 'mallory@bad.test', 'bob@example.test', '127.0.0.2');
  assert.match(refused[3] as string, /^5\d\d /, `refused: ${JSON.stringify(refused)}`);

  const browser = await launch(t);
  const page = await browser.newPage({ viewport: { width: 1300, height: 1000 } });
  const pageErrors: string[] = [];
  const dialogs: string[] = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  // A CSP violation (the page breaking its own policy) or a failed load shows up here.
  page.on('console', (m) => {
    if (m.type() === 'error') pageErrors.push(m.text());
  });
  page.on('dialog', (d) => {
    dialogs.push(d.message());
    void d.dismiss();
  });

  try {
    await checkPage(page, base, app.port);
  } catch (err) {
    // What the page looked like when it went wrong, and what it said.
    const failed = SHOT.replace(/\.png$/, '-failure.png');
    fs.mkdirSync(path.dirname(failed), { recursive: true });
    await page.screenshot({ path: failed, fullPage: true }).catch(() => undefined);
    t.diagnostic(`failure screenshot: ${failed}; status line: ${await page.locator('#status').textContent().catch(() => '?')}`);
    throw err;
  }
  await page.screenshot({ path: SHOT, fullPage: true });
  t.diagnostic(`screenshot: ${SHOT}`);
  assert.deepEqual(dialogs, [], 'no script ran from the data');
  assert.deepEqual(pageErrors, []);
});

async function checkPage(page: Page, base: string, smtpPort: number): Promise<void> {
  await page.goto(`${base}/dashboard/#token=${encodeURIComponent(TOKEN)}`);
  const rows = page.locator('#history tbody tr');
  await showsSenders(page, ['mallory@bad.test', 'alice@good.test']);
  assert.ok(!page.url().includes(TOKEN), 'the token is taken out of the address bar');
  assert.equal(await rows.filter({ hasText: 'alice@good.test' }).locator('td.outcome').textContent(), 'accepted');
  assert.equal(await rows.filter({ hasText: 'mallory@bad.test' }).locator('td.outcome').textContent(), 'refused');

  // The hostile HELO is text in the table, never an element.
  assert.equal(await rows.filter({ hasText: 'mallory@bad.test' }).locator('td.helo').textContent(), HOSTILE_HELO);
  assert.equal(await page.locator('main img').count(), 0);

  // Live throughput and refusals by check, from /api/stats.
  await until('an accepted bar', async () => (await page.locator('#throughput-chart svg rect.accepted').count()) > 0);
  const legend = await page.locator('#throughput-legend li').allTextContents();
  assert.ok(legend.includes('accepted 1') && legend.includes('refused 1'), `legend: ${JSON.stringify(legend)}`);
  const byCheck = await page.locator('#refusals-legend li').allTextContents();
  assert.ok(byCheck.includes('helo 1'), `refusals by check: ${JSON.stringify(byCheck)}`);
  assert.match((await page.locator('#queue-active').textContent()) ?? '', /^\d+$/);

  // Filtering narrows the table: by sender (substring), then by outcome.
  await page.fill('#filters [name=sender]', 'alice');
  await page.click('#filters button[type=submit]');
  await showsSenders(page, ['alice@good.test']);
  await page.fill('#filters [name=sender]', '');
  await page.fill('#filters [name=ip]', '127.0.0.2');
  await page.click('#filters button[type=submit]');
  await showsSenders(page, ['mallory@bad.test']);
  await page.fill('#filters [name=ip]', '');
  await page.selectOption('#filters [name=outcome]', 'accepted');
  await showsSenders(page, ['alice@good.test']);
  await page.selectOption('#filters [name=outcome]', 'refused');
  await showsSenders(page, ['mallory@bad.test']);
  await page.selectOption('#filters [name=outcome]', '');
  await page.fill('#filters [name=check]', 'helo');
  await page.click('#filters button[type=submit]');
  await showsSenders(page, ['mallory@bad.test']);
  await page.fill('#filters [name=rcpt]', 'nobody');
  await page.click('#filters button[type=submit]');
  await showsSenders(page, []);
  assert.ok(await page.locator('#history-empty').isVisible());
  await page.fill('#filters [name=rcpt]', 'bob@');
  await page.click('#filters button[type=submit]');
  await showsSenders(page, ['mallory@bad.test']);

  // A click opens the transaction's trace: the checks that ran, by name, and the refusing one.
  await rows.first().click();
  await page.locator('#trace').waitFor({ state: 'visible' });
  const checks = await page.locator('#trace-entries td.check').allTextContents();
  assert.ok(checks.includes('helo'), `trace checks: ${checks.join(', ')}`);
  assert.equal(await page.locator('#trace dd.fact-HELO').textContent(), HOSTILE_HELO);
  assert.equal(await page.locator('#trace img').count(), 0);

  // The refresh is live: a new transaction shows up without reloading.
  await page.click('#filters button[type=reset]');
  await showsSenders(page, ['mallory@bad.test', 'alice@good.test']);
  const third = await transaction(smtpPort, 'good.client.test', 'carol@good.test', 'bob@example.test');
  assert.match(third.at(-2) as string, /^250 /);
  await showsSenders(page, ['carol@good.test', 'mallory@bad.test', 'alice@good.test']);
  // The trace of the refused one stays open across refreshes, its row still marked.
  assert.ok(await page.locator('#trace').isVisible());
  assert.equal(await page.locator('#history tbody tr.selected td.sender').textContent(), 'mallory@bad.test');
  fs.mkdirSync(path.dirname(SHOT), { recursive: true });
}

test('dashboard: without a token the page asks for one, and a wrong token is refused', async (t) => {
  const app = await startTestApp({ admin: { listen: '127.0.0.1:0', token: TOKEN } });
  t.after(() => app.stop());
  const browser = await launch(t);
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${app.app.adminPort as number}/dashboard/`);
  await page.locator('#token-form').waitFor({ state: 'visible' });
  await page.fill('#token-input', 'not-the-right-token-at-all');
  await page.click('#token-form button[type=submit]');
  await statusMatches(page, /refused/);
  assert.ok(await page.locator('#token-form').isVisible());
  await page.fill('#token-input', TOKEN);
  await page.click('#token-form button[type=submit]');
  await page.locator('#main').waitFor({ state: 'visible' });
  await statusMatches(page, /^updated /);
});

test('dashboard: a greylisted transaction has a release button that lets its triplet through', async (t) => {
  const app = await startTestApp({ admin: { listen: '127.0.0.1:0', token: TOKEN }, relay: { forward_from_ip: ['127.0.0.1'] }, greylist: { when: 'always', delay: '5m' } });
  t.after(() => app.stop());
  const first = await transaction(app.port, 'grey.client.test', 'dave@grey.test', 'bob@example.test', '127.0.0.3');
  assert.match(first[3] as string, /^4\d\d /, `greylisted: ${JSON.stringify(first)}`);
  const browser = await launch(t);
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${app.app.adminPort as number}/dashboard/#token=${encodeURIComponent(TOKEN)}`);
  await showsSenders(page, ['dave@grey.test']);
  assert.equal(await page.locator('#history tbody td.outcome').textContent(), 'tempfailed');
  await page.locator('#history tbody tr').first().click();
  await page.locator('#release').waitFor({ state: 'visible' });
  assert.ok((await page.locator('#trace-entries td.check').allTextContents()).includes('greylist'));
  await page.click('#release');
  await page.locator('#release-result').waitFor({ state: 'visible' });
  assert.match((await page.locator('#release-result').textContent()) ?? '', /^released: .*dave@grey\.test/);
  // The retry passes now, without waiting out greylist.delay.
  const retry = await transaction(app.port, 'grey.client.test', 'dave@grey.test', 'bob@example.test', '127.0.0.3');
  assert.match(retry.at(-2) as string, /^250 /, `after release: ${JSON.stringify(retry)}`);
});
