// The stream picker: what runs, from the relay's watched list (`list` with `watch`): namespaces,
// pods and containers, and task identity (project, domain, run, action, attempt), with search
// and counts. The relay lists only streams the session's token may read. Choosing a pod selects
// all its containers; a run (or an action) selects every pod of it.

import { selectionKey } from './url.js';

/** How many pods a namespace (or a run) shows before "N more". */
const SHOWN_PER_GROUP = 200;

/** The catalog of log streams of one connection: relay id → `{labels, live}`. */
export class Catalog {
  constructor() {
    this.streams = new Map();
  }

  clear() {
    this.streams.clear();
  }

  /** The `streams` answer: the whole list. */
  replace(entries) {
    this.streams.clear();
    for (const e of entries || []) this.streams.set(e.stream, { labels: e.labels, live: e.live !== false });
  }

  /** A `catalog` event: streams added (or whose `live` changed) and removed. */
  apply(event) {
    for (const e of event.added || []) this.streams.set(e.stream, { labels: e.labels, live: e.live !== false });
    for (const e of event.removed || []) this.streams.delete(e.stream);
  }

  /** Entries whose labels match the search text (case-insensitive, any label). */
  matching(text) {
    const q = text.trim().toLowerCase();
    const all = [...this.streams.values()];
    if (!q) return all;
    return all.filter(({ labels: l }) => [
      l.namespace, l.pod, l.container, l.project, l.domain, l.run, l.action, l.attempt, l.node,
      `${l.namespace}/${l.pod}/${l.container}`,
    ].some((v) => v && String(v).toLowerCase().includes(q)));
  }
}

/** Groups entries into namespace → pod → containers, sorted by name. */
export function byNamespace(entries) {
  const nss = new Map();
  for (const e of entries) {
    const l = e.labels;
    let ns = nss.get(l.namespace);
    if (!ns) nss.set(l.namespace, (ns = new Map()));
    let pod = ns.get(l.pod);
    if (!pod) ns.set(l.pod, (pod = []));
    pod.push(e);
  }
  const sorted = (m) => [...m.entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return sorted(nss).map(([ns, pods]) => ({
    ns,
    pods: sorted(pods).map(([pod, cs]) => ({
      pod,
      containers: cs.sort((a, b) => (a.labels.container < b.labels.container ? -1 : 1) || a.labels.restart - b.labels.restart),
    })),
  }));
}

/** Groups entries that carry a task identity into project/domain → run → action/attempt. */
export function byTask(entries) {
  const tasks = new Map();
  for (const e of entries) {
    const l = e.labels;
    if (!l.project && !l.run) continue;
    const pd = `${l.project || '?'}/${l.domain || '?'}`;
    let runs = tasks.get(pd);
    if (!runs) tasks.set(pd, (runs = { project: l.project, domain: l.domain, runs: new Map() }));
    const runKey = l.run || '?';
    let run = runs.runs.get(runKey);
    if (!run) runs.runs.set(runKey, (run = { run: l.run, actions: new Map() }));
    const actionKey = `${l.action || ''}#${l.attempt || ''}`;
    let action = run.actions.get(actionKey);
    if (!action) run.actions.set(actionKey, (action = { action: l.action, attempt: l.attempt, entries: [] }));
    action.entries.push(e);
  }
  return [...tasks.values()].sort((a, b) => (`${a.project}/${a.domain}` < `${b.project}/${b.domain}` ? -1 : 1));
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

/** The picker's DOM: `onPick(selector, additive)` when the user chooses something. */
export class Picker {
  constructor({ root, search, summary, onPick }) {
    this.root = root;
    this.search = search;
    this.summary = summary;
    this.onPick = onPick;
    this.catalog = new Catalog();
    this.selected = new Set();
    this.collapsed = new Set();
    this.scheduled = false;
    search.addEventListener('input', () => this.schedule());
  }

  /** The keys of the current selections (to tick what is selected). */
  setSelected(selections) {
    this.selected = new Set(selections.map(selectionKey));
    this.schedule();
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      this.render();
    });
  }

  item(depth, name, sel, meta, live, title) {
    const row = el('div', `item d${depth}`);
    row.setAttribute('role', 'treeitem');
    const key = selectionKey(sel);
    const picked = this.selected.has(key);
    if (picked) row.classList.add('picked');
    const box = el('input', 'add');
    box.type = 'checkbox';
    box.checked = picked;
    box.title = 'Add to (or remove from) the merged view';
    box.setAttribute('aria-label', `merge ${name}`);
    box.addEventListener('change', () => this.onPick(sel, true));
    const dot = el('span', live ? 'dot live' : 'dot away');
    dot.title = live ? 'its agent is connected' : 'its agent is disconnected';
    const label = el('button', 'name', name);
    label.type = 'button';
    label.dataset.sel = key;
    if (title) label.title = title;
    label.addEventListener('click', (ev) => this.onPick(sel, ev.ctrlKey || ev.metaKey || ev.shiftKey));
    row.append(box, dot, label);
    if (meta) row.append(el('span', 'meta', meta));
    return row;
  }

  group(key, head, children) {
    const d = el('details', 'group');
    d.open = !this.collapsed.has(key) || this.search.value.trim() !== '';
    d.addEventListener('toggle', () => {
      if (d.open) this.collapsed.delete(key);
      else this.collapsed.add(key);
    });
    const s = el('summary');
    s.append(head);
    d.append(s, ...children);
    return d;
  }

  render() {
    const all = this.catalog.streams.size;
    const entries = this.catalog.matching(this.search.value);
    const nodes = [];
    const tasks = byTask(entries);
    if (tasks.length) {
      nodes.push(el('h3', 'section', 'Tasks'));
      for (const t of tasks) {
        const runs = [...t.runs.values()].sort((a, b) => (a.run < b.run ? -1 : 1));
        const children = [];
        for (const r of runs.slice(0, SHOWN_PER_GROUP)) {
          const runSel = {};
          if (t.project) runSel.project = t.project;
          if (t.domain) runSel.domain = t.domain;
          if (r.run) runSel.run = r.run;
          const actions = [...r.actions.values()];
          const pods = new Set(actions.flatMap((a) => a.entries.map((e) => `${e.labels.namespace}/${e.labels.pod}`)));
          children.push(this.item(1, `run ${r.run || '?'}`, runSel, plural(pods.size, 'pod', 'pods'),
            actions.some((a) => a.entries.some((e) => e.live))));
          for (const a of actions.sort((x, y) => (`${x.action}${x.attempt}` < `${y.action}${y.attempt}` ? -1 : 1))) {
            const sel = { ...runSel };
            if (a.action) sel.action = a.action;
            if (a.attempt) sel.attempt = a.attempt;
            const name = `${a.action || 'action ?'}${a.attempt ? ` · attempt ${a.attempt}` : ''}`;
            children.push(this.item(2, name, sel, plural(a.entries.length, 'container', 'containers'),
              a.entries.some((e) => e.live)));
          }
        }
        if (runs.length > SHOWN_PER_GROUP) children.push(el('div', 'more', `… ${runs.length - SHOWN_PER_GROUP} more runs: refine the search`));
        const head = el('span', 'gname', `${t.project || '?'} / ${t.domain || '?'}`);
        const meta = el('span', 'meta', plural(runs.length, 'run', 'runs'));
        const wrap = el('span');
        wrap.append(head, meta);
        nodes.push(this.group(`task:${t.project}/${t.domain}`, wrap, children));
      }
      nodes.push(el('h3', 'section', 'Namespaces'));
    }
    for (const { ns, pods } of byNamespace(entries)) {
      const children = [];
      for (const { pod, containers } of pods.slice(0, SHOWN_PER_GROUP)) {
        const podSel = { namespace: ns, pod };
        const live = containers.some((e) => e.live);
        const l0 = containers[0].labels;
        children.push(this.item(1, pod, podSel, plural(containers.length, 'container', 'containers'), live,
          `pod ${ns}/${pod} on node ${l0.node} (uid ${l0.pod_uid}): all its containers`));
        for (const c of containers) {
          const l = c.labels;
          const name = `${l.container}${l.restart ? ` (restart ${l.restart})` : ''}`;
          children.push(this.item(2, name, { namespace: ns, pod, container: l.container }, '', c.live));
        }
      }
      if (pods.length > SHOWN_PER_GROUP) children.push(el('div', 'more', `… ${pods.length - SHOWN_PER_GROUP} more pods: refine the search`));
      const wrap = el('span');
      const nsSel = { namespace: ns };
      const head = el('button', 'gname', ns);
      head.type = 'button';
      head.dataset.sel = selectionKey(nsSel);
      head.title = `every pod of namespace ${ns}`;
      head.addEventListener('click', (ev) => {
        ev.preventDefault();
        this.onPick(nsSel, ev.ctrlKey || ev.metaKey || ev.shiftKey);
      });
      if (this.selected.has(selectionKey(nsSel))) head.classList.add('picked');
      wrap.append(head, el('span', 'meta', plural(pods.length, 'pod', 'pods')));
      nodes.push(this.group(`ns:${ns}`, wrap, children));
    }
    if (!all) nodes.push(el('p', 'empty', 'No log streams yet. They appear here as agents announce them.'));
    else if (!entries.length) nodes.push(el('p', 'empty', 'Nothing matches the search.'));
    this.root.replaceChildren(...nodes);
    const pods = new Set(entries.map((e) => `${e.labels.namespace}/${e.labels.pod}`)).size;
    this.summary.textContent = this.search.value.trim()
      ? `${entries.length} of ${plural(all, 'stream', 'streams')} match (${plural(pods, 'pod', 'pods')})`
      : `${plural(all, 'stream', 'streams')} in ${plural(pods, 'pod', 'pods')}`;
  }
}
