// The web dashboard's static files (issue 14), served by the admin listener without the token:
// they hold no data; the page itself asks the JSON API with the token the administrator gives it.
// Only the names in DASHBOARD_FILES are served, looked up by exact name, so no request path can
// reach another file (no `..`, no %-escapes, no directories): anything else under /dashboard/ is 404.
import fs from 'node:fs/promises';
import path from 'node:path';
import type http from 'node:http';

const DIR = path.join(import.meta.dirname, 'dashboard');

/** The files the dashboard is made of, and their types. */
export const DASHBOARD_FILES: ReadonlyMap<string, string> = new Map([
  ['index.html', 'text/html; charset=utf-8'],
  ['dashboard.js', 'text/javascript; charset=utf-8'],
  ['dashboard.css', 'text/css; charset=utf-8'],
  ['favicon.svg', 'image/svg+xml'],
]);

/**
 * Scripts and styles from this origin only (no inline script, no eval), data only from the API
 * of this origin, no framing, no forms posted elsewhere: a hostile value that slipped into the
 * DOM still could not run or send anything.
 */
export const DASHBOARD_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

export type DashboardRoute = { kind: 'file'; name: string } | { kind: 'redirect'; location: string } | { kind: 'not-found' };

/** What a (URL-parsed) path under /dashboard asks for; undefined when it is not the dashboard's. */
export function dashboardRoute(pathname: string): DashboardRoute | undefined {
  if (pathname === '/dashboard') return { kind: 'redirect', location: '/dashboard/' };
  if (!pathname.startsWith('/dashboard/')) return undefined;
  const name = pathname.slice('/dashboard/'.length) || 'index.html';
  return DASHBOARD_FILES.has(name) ? { kind: 'file', name } : { kind: 'not-found' };
}

/** Answers a request under /dashboard; false when the path is not the dashboard's. */
export async function serveDashboard(pathname: string, method: string, res: http.ServerResponse): Promise<boolean> {
  const route = dashboardRoute(pathname);
  if (route === undefined) return false;
  const plain = (status: number, text: string, extra: http.OutgoingHttpHeaders = {}) => {
    res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'x-content-type-options': 'nosniff', ...extra });
    res.end(text + '\n');
  };
  if (method !== 'GET' && method !== 'HEAD') {
    plain(405, 'method not allowed', { allow: 'GET, HEAD' });
    return true;
  }
  if (route.kind === 'redirect') {
    plain(301, 'see /dashboard/', { location: route.location });
    return true;
  }
  if (route.kind === 'not-found') {
    plain(404, 'not found');
    return true;
  }
  const body = await fs.readFile(path.join(DIR, route.name));
  res.writeHead(200, {
    'content-type': DASHBOARD_FILES.get(route.name) as string,
    'content-length': body.length,
    'content-security-policy': DASHBOARD_CSP,
    'x-content-type-options': 'nosniff',
    'x-frame-options': 'DENY',
    // The token travels in the fragment, which is never sent; no referrer leaks the page either.
    'referrer-policy': 'no-referrer',
    'cache-control': 'no-cache',
  });
  res.end(method === 'HEAD' ? undefined : body);
  return true;
}
