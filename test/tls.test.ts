// STARTTLS's server side (issue 9, item 8), against the real OpenSSL client: Mozilla's
// "intermediate" profile (forward secrecy and AEAD only: no static-RSA key exchange, no CBC), the
// server's cipher order, TLS 1.2 as the floor, and renegotiation refused.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startTestApp, type TestApp } from './harness/app.ts';

let app: TestApp;
let dir: string;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-tls-'));
  const key = path.join(dir, 'key.pem');
  const cert = path.join(dir, 'cert.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=mx.example.test'], { stdio: 'ignore' });
  app = await startTestApp({ tls: { cert, key } });
});

after(async () => {
  await app?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Runs `openssl s_client -starttls smtp` with `args`, feeding `input` lines a second apart; returns its output. */
function sClient(args: string[], input: string[] = ['QUIT']): Promise<string> {
  return new Promise((resolve) => {
    const child = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${app.port}`, '-starttls', 'smtp', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString('latin1')));
    child.stderr.on('data', (d: Buffer) => (out += d.toString('latin1')));
    let i = 0;
    const feed = setInterval(() => {
      if (i < input.length) child.stdin.write(`${input[i++]}\r\n`);
      else child.stdin.end();
    }, 1000);
    const kill = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.on('error', (err) => (out += `spawn error: ${err.message}`));
    child.on('close', () => {
      clearInterval(feed);
      clearTimeout(kill);
      resolve(out);
    });
  });
}

function cipherOf(out: string): string | undefined {
  return /New, (TLSv[\d.]+|\(NONE\)), Cipher is (\S+)/.exec(out)?.[2];
}

test('TLS 1.2: static-RSA and CBC suites are refused; ECDHE with AES-GCM is taken', async () => {
  for (const weak of ['AES128-SHA', 'AES256-GCM-SHA384', 'ECDHE-RSA-AES128-SHA', 'ECDHE-RSA-AES256-SHA384']) {
    const out = await sClient(['-tls1_2', '-cipher', weak]);
    assert.equal(cipherOf(out), '(NONE)', `${weak} must be refused:\n${out}`);
    assert.match(out, /handshake failure/);
  }
  assert.equal(cipherOf(await sClient(['-tls1_2', '-cipher', 'ECDHE-RSA-AES128-GCM-SHA256'])), 'ECDHE-RSA-AES128-GCM-SHA256');
  assert.equal(cipherOf(await sClient(['-tls1_2', '-cipher', 'ECDHE-RSA-CHACHA20-POLY1305'])), 'ECDHE-RSA-CHACHA20-POLY1305');
});

test('the server chooses from its own order, not the client\'s', async () => {
  const out = await sClient(['-tls1_2', '-cipher', 'ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256']);
  assert.equal(cipherOf(out), 'ECDHE-RSA-AES128-GCM-SHA256', out);
});

test('TLS 1.1 is refused; TLS 1.3 is offered', async () => {
  const old = await sClient(['-tls1_1']);
  assert.equal(cipherOf(old), '(NONE)', old);
  const modern = await sClient([]);
  assert.match(modern, /New, TLSv1\.3, Cipher is TLS_/, modern);
});

test('renegotiation is refused; the client cannot go on after asking for it', async () => {
  const out = await sClient(['-tls1_2'], ['EHLO reneg.test', 'R', 'NOOP']);
  assert.match(out, /RENEGOTIATING/, out);
  assert.match(out, /no renegotiation/, `the server must refuse it:\n${out}`);
  const after = out.slice(out.indexOf('RENEGOTIATING'));
  assert.doesNotMatch(after, /250 2\.0\.0 Ok/, 'the NOOP after the refused renegotiation got no answer');
});
