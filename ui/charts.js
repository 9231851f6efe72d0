// Metrics as live time series (uPlot, vendored from npm: ui/vendor/): each selected pod's CPU and
// memory from its `resources` stream, and the scraped series the user picks. Every series keeps
// a bounded number of points. Colours come from the page's CSS, so charts follow the theme.

import { formatBytes } from './format.js';

/** Points kept per series (10 minutes at one sample a second). */
export const MAX_POINTS = 600;
/** Scraped series names remembered per source (for the chooser). */
const MAX_NAMES = 5000;
/** Charts of picked scraped series, at most. */
export const MAX_PICKED = 8;

/**
 * One line of Prometheus text exposition: `{type: [family, type]}` for `# TYPE`,
 * `{series, name, value}` for a sample, or null.
 */
export function parseLine(text) {
  if (text.startsWith('#')) {
    const m = /^# TYPE (\S+) (\S+)/.exec(text);
    return m ? { type: [m[1], m[2]] } : null;
  }
  let i = 0;
  while (i < text.length && /[A-Za-z0-9_:]/.test(text[i])) i++;
  if (i === 0) return null;
  const name = text.slice(0, i);
  if (text[i] === '{') {
    let quoted = false;
    for (i++; i < text.length; i++) {
      const c = text[i];
      if (quoted && c === '\\') i++;
      else if (c === '"') quoted = !quoted;
      else if (!quoted && c === '}') break;
    }
    i++;
  }
  const series = text.slice(0, i);
  const raw = text.slice(i).trim().split(/\s+/)[0];
  const value = raw === '+Inf' ? Infinity : raw === '-Inf' ? -Infinity : Number.parseFloat(raw);
  if (Number.isNaN(value) && raw !== 'NaN') return null;
  return { series, name, value };
}

/** The unit of a series by its name: `bytes`, `seconds`, `cores`, `ratio` or ''. */
export function unitOf(name) {
  const n = name.replace(/_total$/, '');
  if (n.endsWith('_bytes')) return 'bytes';
  if (n.endsWith('_seconds')) return 'seconds';
  if (n.endsWith('_cores')) return 'cores';
  if (n.endsWith('_ratio')) return 'ratio';
  return '';
}

function fmtNumber(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  const a = Math.abs(v);
  if (a !== 0 && (a < 0.001 || a >= 1e6)) return v.toExponential(2);
  return String(Number(v.toPrecision(4)));
}

/** Formats values of `unit`, per second when `rate`. */
export function formatter(unit, rate) {
  const per = rate ? '/s' : '';
  if (unit === 'bytes') return (v) => (v === null || v === undefined ? '–' : `${formatBytes(Math.round(v))}${per}`);
  if (unit === 'seconds') return (v) => (v === null || v === undefined ? '–' : rate ? `${fmtNumber(v)} s/s` : `${fmtNumber(v)} s`);
  if (unit === 'cores') return (v) => (v === null || v === undefined ? '–' : `${fmtNumber(v)} cores`);
  return (v) => (v === null || v === undefined ? '–' : `${fmtNumber(v)}${per}`);
}

/** Appends `[t, v]` unless not newer than the last point; keeps at most MAX_POINTS. */
export function push(points, t, v) {
  if (points.length && points[points.length - 1][0] >= t) return false;
  points.push([t, v]);
  if (points.length > MAX_POINTS) points.splice(0, points.length - MAX_POINTS);
  return true;
}

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function colours() {
  return Array.from({ length: 10 }, (_, i) => css(`--c${i}`) || '#888');
}

/** A uPlot chart in `root`, rebuilt when its series change or the theme flips. */
class Chart {
  constructor(root, title, format) {
    this.root = root;
    this.title = title;
    this.format = format;
    this.plot = null;
    this.labels = [];
  }

  draw(series) {
    // series: [{label, colour, points: [[t, v]…]}]
    const labels = series.map((s) => `${s.label}|${s.colour}`);
    const uPlot = globalThis.uPlot;
    const tables = series.map((s) => [s.points.map((p) => p[0]), s.points.map((p) => p[1])]);
    const data = tables.length ? uPlot.join(tables) : [[]];
    const width = Math.max(200, this.root.clientWidth || 320);
    if (!this.plot || labels.join() !== this.labels.join() || this.theme !== themeGen) {
      if (this.plot) this.plot.destroy();
      this.labels = labels;
      this.theme = themeGen;
      const palette = colours();
      const axis = { stroke: css('--muted'), grid: { stroke: css('--line'), width: 1 }, ticks: { stroke: css('--line'), width: 1 } };
      this.plot = new uPlot({
        title: this.title,
        width,
        height: 150,
        cursor: { drag: { x: false, y: false } },
        legend: { live: false },
        scales: { x: { time: true }, y: { range: (u, min, max) => [Math.min(0, min), max > 0 ? max * 1.15 : 1] } },
        axes: [axis, { ...axis, size: 78, values: (u, vals) => vals.map(this.format) }],
        series: [{}, ...series.map((s) => ({
          label: s.label,
          stroke: palette[s.colour % palette.length],
          width: 1.5,
          spanGaps: true,
          points: { show: true, size: 4 },
          value: (u, v) => this.format(v),
        }))],
      }, data, this.root);
    } else {
      if (this.plot.width !== width) this.plot.setSize({ width, height: 150 });
      this.plot.setData(data);
    }
    let points = 0;
    for (let i = 1; i < data.length; i++) for (const v of data[i]) if (v !== null && v !== undefined) points++;
    this.root.dataset.points = String(points);
  }

  destroy() {
    if (this.plot) this.plot.destroy();
    this.plot = null;
    this.root.remove();
  }
}

let themeGen = 0;

/** The metrics panel: resources per pod, and picked scraped series. */
export class Charts {
  /**
   * `panel` (shown when there is something to chart), `table` (tbody of current values),
   * `cpu`/`mem` chart roots, `picked` (container of scraped-series charts), `colourOf(key)`.
   */
  constructor({ panel, table, cpu, mem, picked, colourOf }) {
    this.panel = panel;
    this.table = table;
    this.colourOf = colourOf;
    this.pods = new Map();
    this.cpu = new Chart(cpu, 'CPU (cores)', formatter('cores', false));
    this.mem = new Chart(mem, 'Memory working set', formatter('bytes', false));
    this.pickedRoot = picked;
    /** Scraped sources by container name: `{labels, names: Map<series, name>, types}`. */
    this.sources = new Map();
    /** Picked series by `container|series`. */
    this.picked = new Map();
    this.dirty = false;
    this.timer = null;
    matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => {
      themeGen++;
      this.redraw();
    });
  }

  clear() {
    this.pods.clear();
    this.table.replaceChildren();
    for (const s of this.sources.values()) s.names.clear();
    for (const p of this.picked.values()) p.points = [];
    this.redraw();
  }

  /** A pod's resources stream started (or restarted): a row and a series of its own. */
  resources(labels) {
    const key = `${labels.namespace}/${labels.pod}`;
    let pod = this.pods.get(key);
    if (!pod) {
      const row = document.createElement('tr');
      row.dataset.pod = key;
      const cells = {};
      for (const name of ['pod', 'cpu', 'cpu-limit', 'memory', 'memory-limit']) {
        cells[name] = document.createElement('td');
        cells[name].className = name;
        cells[name].textContent = '–';
        row.append(cells[name]);
      }
      cells.pod.textContent = key;
      cells.pod.title = `node ${labels.node}, uid ${labels.pod_uid}`;
      this.table.append(row);
      pod = { key, labels, row, cells, cpu: [], mem: [], values: new Map(), colour: this.colourOf(key) };
      this.pods.set(key, pod);
    }
    pod.row.classList.remove('ended');
    this.panel.hidden = false;
    return pod;
  }

  /** A pod's resources stream ended. */
  ended(labels) {
    const pod = this.pods.get(`${labels.namespace}/${labels.pod}`);
    if (pod) pod.row.classList.add('ended');
  }

  /** Forgets pods `keep(key)` does not keep (their selection was removed). */
  retain(keep) {
    for (const [key, pod] of this.pods) {
      if (!keep(key)) {
        pod.row.remove();
        this.pods.delete(key);
      }
    }
    this.redraw();
  }

  /** Samples of a pod's resources stream. */
  resourceLines(labels, lines) {
    const pod = this.resources(labels);
    let newest = null;
    for (const line of lines) {
      const s = parseLine(line.text);
      if (!s || !s.series) continue;
      const t = line.ts / 1e9;
      pod.values.set(s.series, s.value);
      if (s.series === 'pod_cpu_usage_cores') push(pod.cpu, t, s.value);
      if (s.series === 'pod_memory_working_set_bytes') push(pod.mem, t, s.value);
      newest = line;
    }
    if (!newest) return;
    const v = (n) => pod.values.get(n);
    const set = (cell, value, format) => {
      cell.textContent = value === undefined ? '–' : format(value);
      if (value === undefined) delete cell.dataset.value;
      else cell.dataset.value = String(value);
    };
    const cores = (x) => String(Number(x.toFixed(3)));
    set(pod.cells.cpu, v('pod_cpu_usage_cores'), cores);
    set(pod.cells['cpu-limit'], v('pod_cpu_limit_cores'), cores);
    set(pod.cells.memory, v('pod_memory_working_set_bytes'), formatBytes);
    set(pod.cells['memory-limit'], v('pod_memory_limit_bytes'), formatBytes);
    pod.row.title = `sampled ${new Date(newest.ts / 1e6).toISOString()}`;
    this.schedule();
  }

  /** A scraped source's stream started. */
  scrapeSource(labels) {
    let s = this.sources.get(labels.container);
    if (!s) {
      s = { labels, names: new Map(), types: new Map() };
      this.sources.set(labels.container, s);
    }
    this.panel.hidden = false;
    return s;
  }

  /** Samples of a scraped source: remembers the series names, charts the picked ones. */
  scrapeLines(labels, lines) {
    const src = this.scrapeSource(labels);
    for (const line of lines) {
      const s = parseLine(line.text);
      if (!s) continue;
      if (s.type) {
        src.types.set(s.type[0], s.type[1]);
        continue;
      }
      if (src.names.size < MAX_NAMES || src.names.has(s.series)) src.names.set(s.series, s.name);
      const p = this.picked.get(`${labels.container}|${s.series}`);
      if (!p) continue;
      const family = s.name.replace(/_(total|created|bucket|sum|count)$/, '');
      p.counter = src.types.get(s.name) === 'counter' || src.types.get(family) === 'counter' || s.name.endsWith('_total');
      const t = line.ts / 1e9;
      if (p.counter) {
        if (p.prev && t > p.prev[0] && s.value >= p.prev[1]) push(p.points, t, (s.value - p.prev[1]) / (t - p.prev[0]));
        if (!p.prev || t > p.prev[0]) p.prev = [t, s.value];
      } else {
        push(p.points, t, s.value);
      }
    }
    this.schedule();
  }

  /** Picks (or drops) a scraped series, `container|series`. Returns whether it is now picked. */
  toggle(id) {
    const p = this.picked.get(id);
    if (p) {
      p.chart.destroy();
      this.picked.delete(id);
      return false;
    }
    if (this.picked.size >= MAX_PICKED) return false;
    const [container, series] = [id.slice(0, id.indexOf('|')), id.slice(id.indexOf('|') + 1)];
    const name = series.replace(/\{.*$/, '');
    const counter = name.endsWith('_total');
    const root = document.createElement('div');
    root.className = 'chart picked-series';
    root.dataset.series = id;
    this.pickedRoot.append(root);
    const unit = unitOf(name);
    this.picked.set(id, {
      container, series, counter, points: [], prev: null,
      chart: new Chart(root, `${series}${counter ? ' (rate)' : ''} · ${container}`, formatter(unit, counter)),
    });
    this.panel.hidden = false;
    this.schedule();
    return true;
  }

  schedule() {
    this.dirty = true;
    if (this.timer) return;
    // Charts move at most twice a second: samples come every second or slower.
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.dirty) this.redraw();
    }, 500);
  }

  redraw() {
    this.dirty = false;
    if (this.panel.hidden) return;
    const pods = [...this.pods.values()];
    this.cpu.draw(pods.map((p) => ({ label: p.key, colour: p.colour, points: p.cpu })));
    this.mem.draw(pods.map((p) => ({ label: p.key, colour: p.colour, points: p.mem })));
    let i = 0;
    for (const p of this.picked.values()) {
      p.chart.draw([{ label: p.series, colour: i++, points: p.points }]);
    }
  }
}
