// The view as a link: what is selected, how lines are filtered and how they are shown, in the
// query string (never the token). Pure: URLSearchParams in, state out, and back.

/** Selector fields a selection may set (wire/src/selector.rs), in display order. */
export const SELECTOR_FIELDS = [
  'namespace', 'pod', 'pod_regex', 'container', 'container_regex',
  'project', 'domain', 'run', 'action', 'attempt',
];

export const DEFAULT_TAIL = 1000;
export const DEFAULT_MAX_LINES = 100000;
export const DEFAULT_MAX_MIB = 64;
/** At most this many selections (each is a subscription of the relay's per-session limit). */
export const MAX_SELECTIONS = 16;

export function defaults() {
  return {
    selections: [],
    tail: DEFAULT_TAIL,
    follow: true,
    contains: '',
    matches: '',
    q: '',
    caseSensitive: false,
    regex: false,
    only: false,
    ts: 'local',
    src: 'auto',
    wrap: false,
    json: true,
    maxLines: DEFAULT_MAX_LINES,
    maxMiB: DEFAULT_MAX_MIB,
    scrapes: [],
    series: [],
  };
}

function selectionFrom(params) {
  const sel = {};
  for (const f of SELECTOR_FIELDS) {
    const v = (params.get(f) || '').trim();
    if (v) sel[f] = v;
  }
  return Object.keys(sel).length ? sel : null;
}

/** A selection's canonical text: equal selections have equal keys. */
export function selectionKey(sel) {
  const q = new URLSearchParams();
  for (const f of SELECTOR_FIELDS) if (sel[f] !== undefined) q.set(f, sel[f]);
  return q.toString();
}

/** `web/apache`, `web/apache/main`, `pod ~ train-.*`, `run f3a` … */
export function selectionLabel(sel) {
  const parts = [];
  if (sel.project || sel.domain || sel.run || sel.action || sel.attempt) {
    const task = [sel.project, sel.domain].filter(Boolean).join('/');
    if (task) parts.push(task);
    if (sel.run) parts.push(`run ${sel.run}`);
    if (sel.action) parts.push(`action ${sel.action}`);
    if (sel.attempt) parts.push(`attempt ${sel.attempt}`);
  }
  const where = [sel.namespace, sel.pod, sel.container].filter(Boolean).join('/');
  if (where) parts.push(where);
  if (sel.pod_regex) parts.push(`pod ~ ${sel.pod_regex}`);
  if (sel.container_regex) parts.push(`container ~ ${sel.container_regex}`);
  return parts.join(' · ') || 'every log stream';
}

function flag(params, name, fallback) {
  const v = params.get(name);
  if (v === null) return fallback;
  return !/^(0|false|no|off)$/i.test(v);
}

function int(params, name, fallback, min, max) {
  const n = Number.parseInt(params.get(name) || '', 10);
  return Number.isFinite(n) && n >= min && n <= max ? n : fallback;
}

/**
 * The state a query string names. A selection is either the flat selector fields
 * (`?namespace=web&pod=apache`) or a `sel` parameter holding them as a query string of their own
 * (`?sel=namespace%3Dweb%26pod%3Dapache&sel=…`), repeated for a merged view.
 */
export function decode(search) {
  const p = new URLSearchParams(search);
  const s = defaults();
  const seen = new Set();
  const add = (sel) => {
    if (!sel || s.selections.length >= MAX_SELECTIONS) return;
    const key = selectionKey(sel);
    if (seen.has(key)) return;
    seen.add(key);
    s.selections.push(sel);
  };
  add(selectionFrom(p));
  for (const v of p.getAll('sel')) add(selectionFrom(new URLSearchParams(v)));
  s.tail = int(p, 'tail', DEFAULT_TAIL, 0, 4294967295);
  s.follow = flag(p, 'follow', true);
  s.contains = p.get('contains') || '';
  s.matches = p.get('matches') || '';
  s.q = p.get('q') || '';
  s.caseSensitive = flag(p, 'case', false);
  s.regex = flag(p, 'regex', false);
  s.only = flag(p, 'only', false);
  const ts = p.get('ts');
  if (ts === 'utc' || ts === 'local' || ts === 'off') s.ts = ts;
  const src = p.get('src');
  if (src !== null) s.src = flag(p, 'src', true) ? 'on' : 'off';
  s.wrap = flag(p, 'wrap', false);
  s.json = flag(p, 'json', true);
  s.maxLines = int(p, 'max_lines', DEFAULT_MAX_LINES, 10, 1000000);
  s.maxMiB = int(p, 'max_mib', DEFAULT_MAX_MIB, 1, 1024);
  s.scrapes = [...new Set(p.getAll('scrape').filter(Boolean))].slice(0, 8);
  s.series = [...new Set(p.getAll('series').filter((v) => v.includes('|')))].slice(0, 8);
  return s;
}

/** The query string of a state (`?…`, or '' for the empty view), defaults left out. */
export function encode(s) {
  const q = new URLSearchParams();
  if (s.selections.length === 1) {
    for (const f of SELECTOR_FIELDS) if (s.selections[0][f] !== undefined) q.set(f, s.selections[0][f]);
  } else {
    for (const sel of s.selections) q.append('sel', selectionKey(sel));
  }
  if (s.tail !== DEFAULT_TAIL) q.set('tail', String(s.tail));
  if (!s.follow) q.set('follow', 'false');
  if (s.contains) q.set('contains', s.contains);
  if (s.matches) q.set('matches', s.matches);
  if (s.q) q.set('q', s.q);
  if (s.caseSensitive) q.set('case', '1');
  if (s.regex) q.set('regex', '1');
  if (s.only) q.set('only', '1');
  if (s.ts !== 'local') q.set('ts', s.ts);
  if (s.src !== 'auto') q.set('src', s.src === 'on' ? '1' : '0');
  if (s.wrap) q.set('wrap', '1');
  if (!s.json) q.set('json', '0');
  if (s.maxLines !== DEFAULT_MAX_LINES) q.set('max_lines', String(s.maxLines));
  if (s.maxMiB !== DEFAULT_MAX_MIB) q.set('max_mib', String(s.maxMiB));
  for (const c of s.scrapes) q.append('scrape', c);
  for (const c of s.series) q.append('series', c);
  const text = q.toString();
  return text ? `?${text}` : '';
}
