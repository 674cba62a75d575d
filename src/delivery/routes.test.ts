import { test } from 'node:test';
import assert from 'node:assert/strict';
import { domainOf, routeTable } from './routes.ts';

test('routes: an exact route, then the longest wildcard, then local domains by deliver, then *, else mx', () => {
  const t = routeTable({
    routes: { 'example.com': 'lmtp://127.0.0.1:24', '*.example.org': 'maildir:/m/%d/%u', '*.a.example.org': 'smtp://10.0.0.1:25', 'special.example.org': 'smtp://10.0.0.2:25' },
    localDomains: ['example.com', 'local.test', 'example.org'],
    deliver: 'maildir:/var/mail',
  });
  assert.deepEqual(t.routeFor('Example.COM'), { target: 'lmtp://127.0.0.1:24', by: 'routes.example.com' }, 'a route names a local domain: it wins over deliver');
  assert.deepEqual(t.routeFor('local.test'), { target: 'maildir:/var/mail', by: 'deliver' });
  assert.deepEqual(t.routeFor('x.example.org'), { target: 'maildir:/m/%d/%u', by: 'routes.*.example.org' });
  assert.deepEqual(t.routeFor('b.a.example.org'), { target: 'smtp://10.0.0.1:25', by: 'routes.*.a.example.org' }, 'the longest wildcard');
  assert.deepEqual(t.routeFor('special.example.org'), { target: 'smtp://10.0.0.2:25', by: 'routes.special.example.org' }, 'exact before wildcard');
  assert.deepEqual(t.routeFor('example.org'), { target: 'maildir:/var/mail', by: 'deliver' }, '*.example.org is for subdomains only');
  assert.deepEqual(t.routeFor('gmail.com'), { target: 'mx', by: 'mx (the default for relayed mail)' }, 'never the local mailbox');
  assert.deepEqual(t.routeFor('notexample.com'), { target: 'mx', by: 'mx (the default for relayed mail)' });
  assert.equal(t.routeFor('').target, 'maildir:/var/mail', 'no domain (postmaster): ours');
  const idn = routeTable({ routes: { 'xn--bcher-kva.example': 'lmtp://127.0.0.1:24' }, localDomains: ['xn--mller-kva.example'], deliver: 'maildir:/var/mail' });
  assert.equal(idn.routeFor('bücher.example').target, 'lmtp://127.0.0.1:24', 'a route matches the Unicode form too');
  assert.equal(idn.routeFor('müller.example').target, 'maildir:/var/mail', 'so does a local domain');
  const star = routeTable({ routes: { '*': 'smtp://smarthost.test:25' }, localDomains: ['local.test'], deliver: 'lmtp://127.0.0.1:24' });
  assert.equal(star.routeFor('gmail.com').target, 'smtp://smarthost.test:25');
  assert.equal(star.routeFor('local.test').target, 'lmtp://127.0.0.1:24', '* is for the domains that are not ours');
});

test('domainOf: after the last @, lower case', () => {
  assert.equal(domainOf('"a@b"@Example.COM'), 'example.com');
  assert.equal(domainOf('postmaster'), '');
});
