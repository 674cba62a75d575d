// The dashboard's static route: only its own files, whatever the path tries (traversal,
// %-escapes, unknown names), with a strict CSP. Raw request paths (http.request sends them as
// written; fetch would normalise them first), parsed the way the admin server parses them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import type net from 'node:net';
import { dashboardRoute, serveDashboard } from './static.ts';

function get(port: number, rawPath: string, method = 'GET'): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: rawPath, method }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

test('dashboardRoute: exact names only', () => {
  assert.deepEqual(dashboardRoute('/dashboard'), { kind: 'redirect', location: '/dashboard/' });
  assert.deepEqual(dashboardRoute('/dashboard/'), { kind: 'file', name: 'index.html' });
  assert.deepEqual(dashboardRoute('/dashboard/dashboard.css'), { kind: 'file', name: 'dashboard.css' });
  for (const p of ['/dashboard/..%2fpackage.json', '/dashboard/static.ts', '/dashboard/dashboard.js/', '/dashboard//index.html', '/dashboard/index.html%00', '/dashboard/INDEX.HTML']) {
    assert.deepEqual(dashboardRoute(p), { kind: 'not-found' }, p);
  }
  assert.equal(dashboardRoute('/dashboardx'), undefined);
  assert.equal(dashboardRoute('/api/history'), undefined);
});

test('the static route serves the dashboard\'s files with a strict CSP and refuses everything else with 404', async (t) => {
  const server = http.createServer((req, res) => {
    // As src/admin/server.ts does: the WHATWG URL parser first, then the dashboard's route.
    const url = new URL(req.url ?? '/', 'http://admin');
    void serveDashboard(url.pathname, req.method ?? 'GET', res).then((served) => {
      if (!served) {
        res.writeHead(404);
        res.end('not found\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  const port = (server.address() as net.AddressInfo).port;

  const index = await get(port, '/dashboard/');
  assert.equal(index.status, 200);
  assert.match(index.headers['content-type'] ?? '', /^text\/html/);
  const csp = String(index.headers['content-security-policy']);
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'(;|$)/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  assert.equal(index.headers['x-content-type-options'], 'nosniff');
  assert.match(index.body, /<script src="dashboard.js" defer><\/script>/);
  assert.doesNotMatch(index.body, /<script>|\son[a-z]+=/i, 'no inline script or handlers in the page');

  assert.match(String((await get(port, '/dashboard/dashboard.js')).headers['content-type']), /^text\/javascript/);
  assert.match(String((await get(port, '/dashboard/dashboard.css')).headers['content-type']), /^text\/css/);
  assert.equal((await get(port, '/dashboard/index.html')).body, index.body);
  assert.equal(String((await get(port, '/dashboard/favicon.svg')).headers['content-type']), 'image/svg+xml');
  const head = await get(port, '/dashboard/', 'HEAD');
  assert.equal(head.status, 200);
  assert.equal(head.body, '');
  const redirect = await get(port, '/dashboard');
  assert.equal(redirect.status, 301);
  assert.equal(redirect.headers.location, '/dashboard/');

  for (const p of [
    '/dashboard/../package.json',
    '/dashboard/%2e%2e/package.json',
    '/dashboard/%2E%2E/%2E%2E/package.json',
    '/dashboard/..%2fpackage.json',
    '/dashboard/..%2F..%2Fpackage.json',
    '/dashboard/%2e%2e%2f%2e%2e%2fpackage.json',
    '/dashboard/..%5c..%5cpackage.json',
    '/dashboard/..\\..\\package.json',
    '/dashboard/%252e%252e/package.json',
    '/dashboard/static.ts',
    '/dashboard/static.test.ts',
    '/dashboard/secret.txt',
    '/dashboard/dashboard.js%00.css',
    '/dashboard/dashboard.js/',
    '/dashboard/.%2fdashboard.js',
    '/dashboard//etc/passwd',
    '/dashboard/%2fetc%2fpasswd',
  ]) {
    const r = await get(port, p);
    assert.equal(r.status, 404, `${p}: ${r.status}`);
    assert.doesNotMatch(r.body, /"name": "mxguard"|import /, p);
  }
  const post = await get(port, '/dashboard/', 'POST');
  assert.equal(post.status, 405);
});
