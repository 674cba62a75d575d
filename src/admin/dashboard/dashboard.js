// mxguard's dashboard (issue 14): plain JS, no framework, no build step, nothing from elsewhere.
// It reads the admin JSON API with the token the administrator gives it (#token=… in the address,
// or the form) and redraws every few seconds. Every value from the API is hostile (a client picks
// its HELO and addresses): they reach the page only as text nodes (textContent, createTextNode)
// or properties such as title, never as markup; the page's CSP forbids inline script besides.
/* global document, window, location, history, sessionStorage, fetch, URLSearchParams */
(() => {
  'use strict';

  const REFRESH_MS = 5000;
  const HISTORY_LIMIT = 200;
  const TOKEN_KEY = 'mxguard.adminToken';
  const OUTCOMES = ['accepted', 'refused', 'tempfailed', 'discarded', 'aborted'];
  // One colour per check in the refusals chart (our constants: no value from the API becomes style).
  const PALETTE = ['#d1495b', '#edae49', '#00798c', '#30638e', '#8e6c8a', '#6a994e', '#bc4749', '#4f5d75', '#c97c5d', '#3d405b'];
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const byId = (id) => document.getElementById(id);
  let token = null;
  let timer = 0;
  let generation = 0;
  let selectedSeq = null;
  let shownHistory = '';
  const knownChecks = new Set();

  // --- DOM helpers: strings always become text nodes ------------------------------------------

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (v === undefined || v === null) continue;
      if (k === 'dataset') Object.assign(node.dataset, v);
      else node[k] = v; // properties only (className, title, tabIndex…): never innerHTML
    }
    for (const c of children) append(node, c);
    return node;
  }

  function append(node, child) {
    if (child === undefined || child === null) return;
    node.append(typeof child === 'string' || typeof child === 'number' ? document.createTextNode(String(child)) : child);
  }

  function svg(tag, attrs = {}, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    for (const c of children) append(node, c);
    return node;
  }

  function replaceChildren(node, children) {
    node.replaceChildren();
    for (const c of children) append(node, c);
  }

  const pad = (n) => String(n).padStart(2, '0');
  function clockTime(ms) {
    const d = new Date(ms);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function fullTime(ms) {
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clockTime(ms)}`;
  }
  function age(seconds) {
    if (!Number.isFinite(seconds) || seconds <= 0) return '–';
    if (seconds < 60) return `${Math.round(seconds)}s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${Math.round(seconds % 60)}s`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
    return `${Math.floor(seconds / 86400)}d ${Math.floor((seconds % 86400) / 3600)}h`;
  }
  const text = (v) => (v === undefined || v === null ? '' : String(v));
  const outcomeClass = (o) => (OUTCOMES.includes(o) ? o : 'unknown');
  const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : 0);

  function status(message, isError = false) {
    const s = byId('status');
    s.textContent = message;
    s.classList.toggle('error', isError);
  }

  // --- the token -------------------------------------------------------------------------------

  class AuthError extends Error {}
  /** The API's answer to a request it could not take (400: a filter it does not accept). */
  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  /** #token=… in the address: keep it for this tab and take it out of the address bar. */
  function tokenFromFragment() {
    const m = /^#token=(.+)$/.exec(location.hash);
    if (!m) return;
    try {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    } catch {
      sessionStorage.setItem(TOKEN_KEY, m[1]);
    }
    history.replaceState(null, '', location.pathname + location.search);
  }

  function askToken(why) {
    token = null;
    window.clearTimeout(timer);
    byId('main').hidden = true;
    byId('forget').hidden = true;
    byId('token-form').hidden = false;
    if (why) status(why, true);
    else status('no token');
    byId('token-input').focus();
  }

  async function api(path, init = {}) {
    const res = await fetch(path, { ...init, headers: { authorization: `Bearer ${token}` }, cache: 'no-store' });
    if (res.status === 401) throw new AuthError('the admin API refused this token');
    if (!res.ok) {
      let detail = '';
      try {
        detail = text((await res.json()).error);
      } catch {
        /* not JSON */
      }
      throw new ApiError(`${path.split('?')[0]}: HTTP ${res.status}${detail ? ` (${detail})` : ''}`, res.status);
    }
    return res.json();
  }

  // --- charts (inline SVG) ---------------------------------------------------------------------

  const W = 720;
  const H = 190;
  const M = { left: 36, right: 8, top: 10, bottom: 22 };

  function niceMax(v) {
    if (v <= 4) return 4;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const f of [1, 2, 2.5, 5, 10]) if (f * p >= v) return f * p;
    return 10 * p;
  }

  /**
   * A stacked bar per minute. series: [{ name, cls?, color?, values: number[] }]; the bars'
   * tooltips (<title>) list each series' count for the minute.
   */
  function stackedBars(box, minutes, series, emptyText) {
    const n = Math.max(minutes.length, 1);
    const totals = minutes.map((_, i) => series.reduce((s, x) => s + x.values[i], 0));
    const max = niceMax(Math.max(0, ...totals));
    const plotW = W - M.left - M.right;
    const plotH = H - M.top - M.bottom;
    const bw = plotW / n;
    const y = (v) => M.top + plotH - (v / max) * plotH;
    const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', class: 'bars' });
    for (const v of [0, max / 2, max]) {
      root.append(svg('line', { x1: M.left, x2: W - M.right, y1: y(v), y2: y(v), class: 'grid' }));
      root.append(svg('text', { x: M.left - 4, y: y(v) + 4, class: 'axis', 'text-anchor': 'end' }, String(Math.round(v * 10) / 10)));
    }
    minutes.forEach((m, i) => {
      let base = 0;
      const x = M.left + i * bw;
      const g = svg('g', { class: 'minute' });
      const lines = [clockTime(num(m.t)).slice(0, 5)];
      for (const s of series) {
        const v = s.values[i];
        if (v > 0) {
          const attrs = { x: x + 0.5, width: Math.max(bw - 1, 1), y: y(base + v), height: Math.max(y(base) - y(base + v), 0.5) };
          if (s.cls) attrs.class = s.cls;
          if (s.color) attrs.fill = s.color;
          g.append(svg('rect', attrs));
          lines.push(`${s.name}: ${v}`);
        }
        base += v;
      }
      // A transparent full-height target so the tooltip works on empty minutes too.
      g.append(svg('rect', { x, width: bw, y: M.top, height: plotH, class: 'hit' }, svg('title', {}, lines.join('\n'))));
      root.append(g);
    });
    // Clock times every quarter of an hour back from now, so the bars line up with the logs.
    const ticks = [45, 30, 15].map((ago) => n - 1 - ago).filter((i) => i > 0);
    for (const i of [0, ...ticks, n - 1]) {
      const label = i === n - 1 ? 'now' : clockTime(num(minutes[i]?.t)).slice(0, 5);
      const anchor = i === 0 ? 'start' : i === n - 1 ? 'end' : 'middle';
      root.append(svg('text', { x: M.left + i * bw + (i === 0 ? 0 : i === n - 1 ? bw : bw / 2), y: H - 6, class: 'axis', 'text-anchor': anchor }, label));
    }
    if (totals.every((t) => t === 0)) {
      root.append(svg('text', { x: M.left + plotW / 2, y: M.top + plotH / 2, class: 'empty', 'text-anchor': 'middle' }, emptyText));
    }
    box.replaceChildren(root);
  }

  function legend(ul, items) {
    replaceChildren(
      ul,
      items.map((it) => {
        const swatch = el('span', { className: `swatch ${it.cls ?? ''}` });
        if (it.color) swatch.style.backgroundColor = it.color; // CSSOM, allowed by the CSP
        return el('li', {}, swatch, it.name, ' ', el('span', { className: 'count' }, String(it.total)));
      }),
    );
  }

  function drawStats(stats) {
    const minutes = Array.isArray(stats.minutes) ? stats.minutes : [];
    const last = minutes[minutes.length - 1] ?? {};
    for (const o of OUTCOMES) byId(`now-${o}`).textContent = String(num(last[o]));
    const q = stats.queue ?? {};
    byId('queue-active').textContent = String(num(q.active));
    byId('queue-deferred').textContent = String(num(q.deferred));
    byId('queue-oldest').textContent = age(num(q.oldestAgeSeconds));

    const outcomeSeries = OUTCOMES.map((o) => ({ name: o, cls: o, values: minutes.map((m) => num(m[o])) }));
    stackedBars(byId('throughput-chart'), minutes, outcomeSeries, 'no transactions in the last hour');
    legend(byId('throughput-legend'), outcomeSeries.map((s) => ({ name: s.name, cls: s.cls, total: s.values.reduce((a, b) => a + b, 0) })));

    const totals = new Map();
    for (const m of minutes) {
      for (const [check, n] of Object.entries(m.byCheck ?? {})) totals.set(check, (totals.get(check) ?? 0) + num(n));
    }
    const checks = [...totals.keys()].sort((a, b) => totals.get(b) - totals.get(a) || (a < b ? -1 : 1));
    for (const c of checks) knownChecks.add(c);
    const checkSeries = checks.map((c, i) => ({ name: c, color: PALETTE[i % PALETTE.length], values: minutes.map((m) => num((m.byCheck ?? {})[c])) }));
    stackedBars(byId('refusals-chart'), minutes, checkSeries, 'no refusals in the last hour');
    legend(byId('refusals-legend'), checkSeries.map((s) => ({ name: s.name, color: s.color, total: totals.get(s.name) })));
  }

  // --- history ---------------------------------------------------------------------------------

  function filterQuery() {
    const form = byId('filters');
    const q = new URLSearchParams();
    for (const name of ['ip', 'sender', 'rcpt', 'outcome', 'check']) {
      const v = form.elements[name].value.trim();
      if (v) q.set(name, v);
    }
    q.set('limit', String(HISTORY_LIMIT));
    return q.toString();
  }

  function recipientsCell(item) {
    const td = el('td', { className: 'rcpts' });
    const rcpts = Array.isArray(item.rcpts) ? item.rcpts : [];
    const refused = Array.isArray(item.refused) ? item.refused : [];
    rcpts.forEach((r, i) => {
      if (i > 0) append(td, ', ');
      append(td, text(r));
    });
    refused.forEach((r, i) => {
      if (i > 0 || rcpts.length > 0) append(td, ', ');
      append(td, el('span', { className: 'refused-rcpt', title: `${text(r.check)}: ${text(r.reply)}` }, text(r.rcpt)));
    });
    return td;
  }

  function drawHistory(items) {
    // Unchanged since the last refresh: leave the rows (and the keyboard focus on one) alone.
    const json = JSON.stringify(items);
    if (json === shownHistory) return;
    shownHistory = json;
    const tbody = byId('history').tBodies[0];
    const rows = items.map((item) => {
      const seq = String(item.seq);
      const tr = el(
        'tr',
        { tabIndex: 0, dataset: { seq }, className: String(item.seq) === String(selectedSeq) ? 'selected' : '' },
        el('td', { className: 'time', title: fullTime(num(item.at)) }, clockTime(num(item.at))),
        el('td', { className: 'ip' }, text(item.ip)),
        el('td', { className: 'helo', title: text(item.helo) }, text(item.helo)),
        el('td', { className: 'sender', title: text(item.mailFrom) }, item.mailFrom === '' ? '<>' : text(item.mailFrom)),
        recipientsCell(item),
        el('td', { className: 'outcome' }, el('span', { className: `badge ${outcomeClass(item.outcome)}` }, text(item.outcome))),
        el('td', { className: 'score' }, text(item.score)),
        el('td', { className: 'reply', title: text(item.reply) }, text(item.reply)),
      );
      for (const e of Array.isArray(item.entries) ? item.entries : []) if (e && e.check) knownChecks.add(String(e.check));
      return tr;
    });
    tbody.replaceChildren(...rows);
    byId('history-empty').hidden = rows.length > 0;
    replaceChildren(byId('check-names'), [...knownChecks].sort().map((c) => el('option', { value: c })));
  }

  // --- one transaction's trace -----------------------------------------------------------------

  function greylisted(item) {
    const entries = Array.isArray(item.entries) ? item.entries : [];
    const refused = Array.isArray(item.refused) ? item.refused : [];
    return entries.some((e) => e.check === 'greylist' && e.verdict === 'tempfail') || refused.some((r) => r.check === 'greylist');
  }

  function drawTrace(item) {
    selectedSeq = String(item.seq);
    for (const tr of byId('history').tBodies[0].rows) tr.classList.toggle('selected', tr.dataset.seq === selectedSeq);
    byId('trace').hidden = false;
    byId('trace-title').textContent = `#${selectedSeq}`;
    const facts = [
      ['time', fullTime(num(item.at))],
      ['session', text(item.sid)],
      ['client IP', text(item.ip)],
      ['HELO', text(item.helo)],
      ['sender', item.mailFrom === '' ? '<>' : text(item.mailFrom)],
      ['recipients', (Array.isArray(item.rcpts) ? item.rcpts : []).map(text).join(', ')],
      ['queue ID', text(item.id)],
      ['size', item.size === undefined ? '' : `${text(item.size)} octets`],
      ['score', text(item.score)],
      ['outcome', text(item.outcome)],
      ['reply', text(item.reply)],
    ];
    replaceChildren(
      byId('trace-facts'),
      facts.filter(([, v]) => v !== '').flatMap(([k, v]) => [el('dt', {}, k), el('dd', { className: `fact-${k.replace(/\W/g, '-')}` }, v)]),
    );
    const entries = Array.isArray(item.entries) ? item.entries : [];
    replaceChildren(
      byId('trace-entries').tBodies[0],
      entries.map((e) =>
        el(
          'tr',
          { className: `verdict-${/^[a-z]+$/.test(text(e.verdict)) ? e.verdict : 'unknown'}` },
          el('td', {}, text(e.phase)),
          el('td', { className: 'check' }, text(e.check)),
          el('td', { className: 'verdict' }, text(e.verdict)),
          el('td', {}, text(e.score)),
          el('td', {}, text(e.ms)),
          el('td', { className: 'reply' }, text(e.reply)),
        ),
      ),
    );
    const refused = Array.isArray(item.refused) ? item.refused : [];
    byId('trace-refused-box').hidden = refused.length === 0;
    replaceChildren(
      byId('trace-refused').tBodies[0],
      refused.map((r) => el('tr', {}, el('td', {}, text(r.rcpt)), el('td', { className: 'check' }, text(r.check)), el('td', { className: 'reply' }, text(r.reply)))),
    );
    byId('release').hidden = !greylisted(item);
    byId('release-result').hidden = true;
  }

  async function showTrace(seq) {
    try {
      drawTrace(await api(`/api/history/${encodeURIComponent(seq)}`));
    } catch (err) {
      failed(err);
    }
  }

  async function release() {
    if (selectedSeq === null) return;
    const out = byId('release-result');
    try {
      const r = await api(`/api/history/${encodeURIComponent(selectedSeq)}/release`, { method: 'POST' });
      const keys = Array.isArray(r.released) ? r.released.map(text) : [];
      out.textContent = keys.length ? `released: ${keys.join(', ')}` : 'nothing was waiting';
    } catch (err) {
      out.textContent = err instanceof Error ? err.message : String(err);
      if (err instanceof AuthError) askToken(err.message);
    }
    out.hidden = false;
  }

  // --- the refresh loop ------------------------------------------------------------------------

  function failed(err) {
    if (err instanceof AuthError) askToken(err.message);
    else status(err instanceof Error ? err.message : String(err), true);
  }

  async function refresh() {
    window.clearTimeout(timer);
    if (token === null) return;
    if (document.hidden) return; // a hidden tab asks nothing; visibilitychange starts it again
    const mine = ++generation;
    const [stats, hist] = await Promise.allSettled([api('/api/stats'), api(`/api/history?${filterQuery()}`)]);
    if (mine !== generation || token === null) return; // a newer refresh (a new filter) won
    const errors = [];
    for (const [r, draw] of [[stats, drawStats], [hist, (h) => drawHistory(Array.isArray(h.items) ? h.items : [])]]) {
      if (r.status === 'fulfilled') draw(r.value);
      else if (r.reason instanceof AuthError) return askToken(r.reason.message);
      else errors.push(r.reason instanceof Error ? r.reason.message : String(r.reason));
    }
    // A filter the API refused: the rows on show no longer answer the form, so show none.
    if (hist.status === 'rejected' && hist.reason instanceof ApiError && hist.reason.status === 400) drawHistory([]);
    if (errors.length) status(errors.join('; '), true);
    else status(`updated ${clockTime(Date.now())}`);
    if (byId('live').checked) timer = window.setTimeout(refresh, REFRESH_MS);
  }

  function start() {
    token = sessionStorage.getItem(TOKEN_KEY);
    if (token === null) return askToken();
    byId('token-form').hidden = true;
    byId('main').hidden = false;
    byId('forget').hidden = false;
    status('loading…');
    void refresh();
  }

  // --- wiring ----------------------------------------------------------------------------------

  byId('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const v = byId('token-input').value.trim();
    if (!v) return;
    sessionStorage.setItem(TOKEN_KEY, v);
    byId('token-input').value = '';
    start();
  });
  byId('forget').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    askToken();
  });
  byId('filters').addEventListener('submit', (ev) => {
    ev.preventDefault();
    void refresh();
  });
  byId('filters').addEventListener('reset', () => window.setTimeout(() => void refresh(), 0));
  byId('filters').elements.outcome.addEventListener('change', () => void refresh());
  byId('live').addEventListener('change', () => (byId('live').checked ? void refresh() : window.clearTimeout(timer)));
  const tbody = byId('history').tBodies[0];
  const rowSeq = (target) => target.closest('tr')?.dataset.seq;
  tbody.addEventListener('click', (ev) => {
    const seq = rowSeq(ev.target);
    if (seq !== undefined) void showTrace(seq);
  });
  tbody.addEventListener('keydown', (ev) => {
    const seq = rowSeq(ev.target);
    if ((ev.key === 'Enter' || ev.key === ' ') && seq !== undefined) {
      ev.preventDefault();
      void showTrace(seq);
    }
  });
  byId('trace-close').addEventListener('click', () => {
    byId('trace').hidden = true;
    selectedSeq = null;
    for (const tr of tbody.rows) tr.classList.remove('selected');
  });
  byId('release').addEventListener('click', () => void release());
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && byId('live').checked) void refresh();
  });
  window.addEventListener('hashchange', () => {
    tokenFromFragment();
    start();
  });

  tokenFromFragment();
  start();
})();
