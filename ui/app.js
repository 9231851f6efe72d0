// logrelay live viewer: one WebSocket session to this page's own origin (`/v1/subscribe`),
// decoding the relay's JSON events and binary batches (docs/protocol.md §2 and §3).
//
// Rules this file keeps (docs/security.md, "The browser viewer"):
// - Log text and labels reach the page through `textContent` only, never as markup.
// - The bearer token lives in this script's memory and in the token field. It is read from the
//   URL fragment (`#token=…`, which browsers never send to a server), removed from the address
//   bar at once, sent only as a WebSocket subprotocol entry, and never stored.
// - The page holds at most `max_lines` entries (default 10,000); older ones are dropped and
//   counted.
'use strict';

(() => {
  // ---- configuration -----------------------------------------------------------------------

  /** Selector fields of a log subscription, in form order (wire/src/selector.rs). */
  const SELECTOR_FIELDS = [
    'namespace', 'pod', 'pod_regex', 'container', 'container_regex',
    'project', 'domain', 'run', 'action', 'attempt',
  ];
  /** The fields that also select a pod's resource stream (its container is `resources`). */
  const METRICS_FIELDS = [
    'namespace', 'pod', 'pod_regex', 'project', 'domain', 'run', 'action', 'attempt',
  ];
  const DEFAULT_TAIL = 1000;
  const LOG_SUB = 'logs';
  const METRICS_SUB = 'metrics';

  /** WebSocket close codes (wire/src/session.rs `close`, docs/protocol.md §3.6). */
  const CLOSE_CODES = {
    1000: 'closed',
    1001: 'relay shutting down',
    1002: 'protocol error',
    1006: 'connection lost',
    1009: 'message too large',
    1011: 'relay error',
    4001: 'unauthenticated',
    4003: 'forbidden',
    4004: 'token expired',
    4008: 'limit reached',
    4009: 'slow consumer',
    4010: 'ping timeout',
  };
  /** Close codes after which reconnecting may help (never auth failures or limits). */
  const RETRY_CODES = new Set([1001, 1006, 1011, 1012, 1013, 4009, 4010]);

  const GAP_REASONS = {
    slow_consumer: 'this viewer fell behind the relay',
    agent_buffer_full: 'the agent\'s buffer was full',
    not_retained: 'no longer held',
    epoch_lost: 'the agent lost its numbering (it restarted)',
  };

  // ---- the batch format (docs/protocol.md §2, wire/src/batch.rs) --------------------------

  const HEADER_LEN = 40;
  const LINE_HEADER_LEN = 13;
  const MAGIC = 0x4c; // 'L'
  const VERSION = 1;
  const KIND_LOG = 1;
  const KIND_GAP = 3;
  const FLAG_BACKFILL = 1;
  const LINE_STDERR = 1;
  const LINE_PARTIAL = 2;
  const LINE_TRUNCATED = 4;
  const LINE_SYSTEM = 8;
  const U64_MAX = (1n << 64n) - 1n;

  /**
   * Decodes one binary message. Checks what `BatchHeader::parse`, `batch::lines` and
   * `batch::gap_bytes` check, and throws an Error naming the fault otherwise.
   * Sequence numbers, epochs and timestamps are BigInts (exact).
   */
  function decodeBatch(buffer) {
    const bytes = new Uint8Array(buffer);
    if (bytes.length < HEADER_LEN) {
      throw new Error(`batch of ${bytes.length} bytes is shorter than its ${HEADER_LEN}-byte header`);
    }
    if (bytes[0] !== MAGIC) throw new Error(`bad batch magic 0x${bytes[0].toString(16)}`);
    if (bytes[1] !== VERSION) throw new Error(`unsupported batch version ${bytes[1]}`);
    const kind = bytes[2];
    if (kind !== KIND_LOG && kind !== KIND_GAP) throw new Error(`unknown batch kind ${kind}`);
    const view = new DataView(buffer);
    const header = {
      kind,
      flags: bytes[3],
      stream: Number(view.getBigUint64(4, true)),
      epoch: view.getBigUint64(12, true),
      firstSeq: view.getBigUint64(20, true),
      count: view.getUint32(28, true),
      bodyLen: view.getUint32(32, true),
    };
    if (header.firstSeq + BigInt(header.count) > U64_MAX) {
      throw new Error('sequence numbers of the batch overflow');
    }
    if (header.bodyLen !== bytes.length - HEADER_LEN) {
      throw new Error(`batch body is ${bytes.length - HEADER_LEN} bytes but the header says ${header.bodyLen}`);
    }
    if (kind === KIND_GAP) {
      if (header.bodyLen !== 8) throw new Error('gap batch body is not 8 bytes');
      return { header, gapBytes: view.getBigUint64(HEADER_LEN, true), lines: [] };
    }
    const lines = [];
    let at = HEADER_LEN;
    for (let index = 0; index < header.count; index++) {
      if (bytes.length - at < LINE_HEADER_LEN) throw new Error(`line record ${index} is malformed`);
      const timestampNs = view.getBigInt64(at, true);
      const flags = bytes[at + 8];
      const len = view.getUint32(at + 9, true);
      const start = at + LINE_HEADER_LEN;
      if (bytes.length - start < len) throw new Error(`line record ${index} is malformed`);
      lines.push({
        seq: header.firstSeq + BigInt(index),
        timestampNs,
        flags,
        message: bytes.subarray(start, start + len),
      });
      at = start + len;
    }
    if (at !== bytes.length) throw new Error(`line record ${header.count} is malformed`);
    return { header, gapBytes: 0n, lines };
  }

  // ---- formatting ---------------------------------------------------------------------------

  const utf8 = new TextDecoder('utf-8', { fatal: false });

  /** Message text without its terminator (LF, CRLF or CR). */
  function messageText(bytes) {
    let end = bytes.length;
    if (end > 0 && bytes[end - 1] === 0x0a) end--;
    if (end > 0 && bytes[end - 1] === 0x0d) end--;
    return utf8.decode(bytes.subarray(0, end));
  }

  /** RFC 3339 UTC with nanoseconds, like `wire::time::rfc3339_nanos`. */
  function rfc3339(ns) {
    const second = ns >= 0n ? ns / 1000000000n : (ns - 999999999n) / 1000000000n;
    const frac = ns - second * 1000000000n;
    const date = new Date(Number(second) * 1000);
    if (Number.isNaN(date.getTime())) return String(ns);
    return `${date.toISOString().slice(0, 19)}.${frac.toString().padStart(9, '0')}Z`;
  }

  /** Milliseconds shown in the log view: `2024-01-02 03:04:05.123`. */
  function shortTime(ns) {
    const full = rfc3339(ns);
    return full.length >= 23 ? `${full.slice(0, 10)} ${full.slice(11, 23)}` : full;
  }

  function formatBytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let v = Number(n);
    let u = 0;
    while (Math.abs(v) >= 1024 && u < units.length - 1) {
      v /= 1024;
      u++;
    }
    const text = u === 0 ? String(v) : v.toFixed(1).replace(/\.0$/, '');
    return `${text} ${units[u]}`;
  }

  function formatCores(v) {
    return String(Number(v.toFixed(3)));
  }

  function plural(n, one, many) {
    return `${n} ${n === 1n || n === 1 ? one : many}`;
  }

  function streamName(labels) {
    return labels ? `${labels.pod}/${labels.container}` : '?';
  }

  /** A stream's identity across reconnects and relay restarts (relay ids change). */
  function streamKey(labels) {
    return JSON.stringify([
      labels.org, labels.cluster, labels.node, labels.namespace, labels.pod, labels.pod_uid,
      labels.container, labels.restart, labels.kind,
    ]);
  }

  // ---- page elements -------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);
  const form = $('selector');
  const logEl = $('log');
  const statusEl = $('status');
  const errorEl = $('error');
  const droppedEl = $('dropped');
  const jumpEl = $('jump');
  const metricsEl = $('metrics');
  const metricsRows = $('metrics-rows');
  const stopButton = $('stop');

  const query = new URLSearchParams(location.search);
  const maxLines = (() => {
    const n = Number.parseInt(query.get('max_lines') || '', 10);
    return Number.isFinite(n) && n >= 10 && n <= 1000000 ? n : 10000;
  })();

  // ---- state ---------------------------------------------------------------------------------

  /**
   * Per stream (keyed by labels): what is shown, for ordering and duplicates. `shown[head..]`
   * holds `{seq, el}` of the stream's lines on the page in sequence order (the oldest are
   * dropped by moving `head`, so dropping is O(1)).
   */
  const streamsByKey = new Map();
  /** Relay stream id → stream state, for the current connection. */
  let streamsById = new Map();
  /** Log line element → its stream state (to forget it when it is dropped). */
  const lineStream = new WeakMap();
  let droppedEntries = 0;
  /** Autoscroll: on until the user scrolls away from the newest line. */
  let following = true;
  let scrollScheduled = false;
  /** Where this script last scrolled the view to (its own scroll events are not the user's). */
  let autoTop = -1;

  let socket = null;
  let generation = 0;
  let params = null;
  let token = '';
  let retryMs = 1000;
  let retryTimer = null;

  function setStatus(text, kind) {
    statusEl.textContent = text;
    statusEl.className = `status ${kind || ''}`;
  }

  function showError(text) {
    for (const existing of errorEl.children) {
      if (existing.textContent === text) return;
    }
    const item = document.createElement('div');
    item.textContent = text;
    errorEl.append(item);
    while (errorEl.childElementCount > 5) errorEl.firstElementChild.remove();
    errorEl.hidden = false;
  }

  function clearErrors() {
    errorEl.replaceChildren();
    errorEl.hidden = true;
  }

  // ---- the log view --------------------------------------------------------------------------

  function logStreamCount() {
    let n = 0;
    for (const st of streamsById.values()) if (st.kind === 'log') n++;
    return n;
  }

  function span(cls, text) {
    const s = document.createElement('span');
    s.className = cls;
    s.textContent = text;
    return s;
  }

  function lineElement(st, line, backfill) {
    const stderr = (line.flags & LINE_STDERR) !== 0;
    const el = document.createElement('div');
    const classes = ['line', stderr ? 'stderr' : 'stdout'];
    if (line.flags & LINE_SYSTEM) classes.push('system');
    if (line.flags & LINE_PARTIAL) classes.push('partial');
    if (line.flags & LINE_TRUNCATED) classes.push('truncated');
    if (backfill) classes.push('backfill');
    el.className = classes.join(' ');
    const ts = span('ts', shortTime(line.timestampNs));
    ts.title = rfc3339(line.timestampNs);
    el.append(
      ts,
      span('src', `[${st.name}]`),
      span('fd', stderr ? 'err' : 'out'),
      span('msg', messageText(line.message)),
    );
    if (line.flags & LINE_PARTIAL) el.append(span('flag', 'partial'));
    if (line.flags & LINE_TRUNCATED) el.append(span('flag', 'truncated'));
    return el;
  }

  function marker(kind, text) {
    const el = document.createElement('div');
    el.className = `marker ${kind}`;
    el.textContent = text;
    return el;
  }

  /** Appends entries at the end of the view. */
  function append(nodes) {
    if (nodes.length === 0) return;
    const frag = document.createDocumentFragment();
    frag.append(...nodes);
    logEl.append(frag);
    afterGrowth();
  }

  /**
   * Places a stream's lines by sequence number: in order, each `(epoch, seq)` once. A joining
   * viewer's backfill can arrive after live lines (docs/protocol.md §3.5), and a reconnect
   * re-sends the backlog: both land where they belong, duplicates are skipped.
   */
  function placeLines(st, epoch, lines, backfill, tail) {
    if (st.epoch !== epoch) {
      st.epoch = epoch;
      st.shown = [];
      st.head = 0;
      st.droppedThrough = -1n;
    }
    for (const line of lines) {
      if (line.seq <= st.droppedThrough) continue;
      const shown = st.shown;
      const last = shown.length > st.head ? shown[shown.length - 1].seq : -1n;
      const el = lineElement(st, line, backfill);
      lineStream.set(el, st);
      if (line.seq > last) {
        shown.push({ seq: line.seq, el });
        tail.push(el);
        continue;
      }
      let lo = st.head;
      let hi = shown.length - 1;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (shown[mid].seq < line.seq) lo = mid + 1;
        else hi = mid;
      }
      if (shown[lo].seq === line.seq) continue;
      shown[lo].el.before(el);
      shown.splice(lo, 0, { seq: line.seq, el });
    }
  }

  /** Drops the oldest entries beyond the bound, keeping a paused view where it was. */
  function afterGrowth() {
    const excess = logEl.childElementCount - maxLines;
    if (excess > 0) {
      const before = following ? 0 : logEl.scrollHeight;
      for (let i = 0; i < excess; i++) {
        const el = logEl.firstElementChild;
        const st = lineStream.get(el);
        if (st) forgetLine(st, el);
        el.remove();
      }
      droppedEntries += excess;
      droppedEl.textContent =
        `${droppedEntries} older ${droppedEntries === 1 ? 'entry' : 'entries'} dropped from view ` +
        `(this page keeps the newest ${maxLines}).`;
      droppedEl.hidden = false;
      if (!following) {
        logEl.scrollTop -= before - logEl.scrollHeight;
        autoTop = logEl.scrollTop;
      }
    }
    if (following) {
      if (!scrollScheduled) {
        scrollScheduled = true;
        requestAnimationFrame(() => {
          scrollScheduled = false;
          if (following) scrollToEnd();
        });
      }
    } else {
      jumpEl.hidden = false;
    }
  }

  /** The stream's oldest line on the page is `el` (a stream's lines are in page order). */
  function forgetLine(st, el) {
    const shown = st.shown;
    let at = st.head;
    if (shown[at]?.el !== el) {
      at = shown.indexOf(shown.find((s) => s.el === el));
      if (at < st.head) return; // a line of an earlier epoch
    }
    if (shown[at].seq > st.droppedThrough) st.droppedThrough = shown[at].seq;
    if (at === st.head) {
      st.head++;
      if (st.head > 1024 && st.head * 2 > shown.length) {
        st.shown = shown.slice(st.head);
        st.head = 0;
      }
    } else {
      shown.splice(at, 1);
    }
  }

  function scrollToEnd() {
    logEl.scrollTop = logEl.scrollHeight;
    autoTop = logEl.scrollTop;
  }

  // Lines arriving between this script's scroll and its event must not pause autoscroll: only
  // a scroll to somewhere else (the user's) decides, by where it ends.
  logEl.addEventListener('scroll', () => {
    if (Math.abs(logEl.scrollTop - autoTop) < 1) return;
    autoTop = -1;
    following = logEl.scrollHeight - logEl.scrollTop - logEl.clientHeight < 8;
    jumpEl.hidden = following;
  });

  jumpEl.addEventListener('click', () => {
    following = true;
    jumpEl.hidden = true;
    scrollToEnd();
  });

  function clearView() {
    logEl.replaceChildren();
    for (const st of streamsByKey.values()) {
      const shown = st.shown;
      if (shown.length > st.head && shown[shown.length - 1].seq > st.droppedThrough) {
        st.droppedThrough = shown[shown.length - 1].seq;
      }
      st.shown = [];
      st.head = 0;
    }
    droppedEntries = 0;
    droppedEl.hidden = true;
    following = true;
    jumpEl.hidden = true;
  }

  // ---- the metrics panel ---------------------------------------------------------------------

  /** `name{labels} value [timestamp]` → [series, value]; comments and junk → null. */
  function parseSample(text) {
    if (text.startsWith('#')) return null;
    let i = 0;
    while (i < text.length && /[A-Za-z0-9_:]/.test(text[i])) i++;
    if (i === 0) return null;
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
    const value = Number.parseFloat(text.slice(i).trim().split(/\s+/)[0]
      .replace(/^\+Inf$/, 'Infinity').replace(/^-Inf$/, '-Infinity'));
    return Number.isNaN(value) && !/NaN/.test(text.slice(i)) ? null : [series, value];
  }

  function metricsRow(st) {
    if (st.row) return st.row;
    const row = document.createElement('tr');
    row.dataset.pod = `${st.labels.namespace}/${st.labels.pod}`;
    const cells = {};
    for (const name of ['pod', 'cpu', 'cpuLimit', 'memory', 'memoryLimit', 'sampled']) {
      cells[name] = document.createElement('td');
      cells[name].className = name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
      row.append(cells[name]);
    }
    const l = st.labels;
    cells.pod.textContent = `${l.namespace}/${l.pod}`;
    cells.pod.title = `node ${l.node}, uid ${l.pod_uid}`;
    st.row = row;
    st.cells = cells;
    st.values = new Map();
    metricsRows.append(row);
    metricsEl.hidden = false;
    return row;
  }

  function setCell(cell, value, format) {
    if (value === undefined) {
      cell.textContent = '–';
      delete cell.dataset.value;
    } else {
      cell.textContent = format(value);
      cell.dataset.value = String(value);
    }
  }

  function updateMetrics(st, lines) {
    metricsRow(st);
    let newest = null;
    for (const line of lines) {
      const sample = parseSample(messageText(line.message));
      if (!sample) continue;
      st.values.set(sample[0], sample[1]);
      newest = line.timestampNs;
    }
    if (newest === null) return;
    const v = (name) => st.values.get(name);
    setCell(st.cells.cpu, v('pod_cpu_usage_cores'), formatCores);
    setCell(st.cells.cpuLimit, v('pod_cpu_limit_cores'), formatCores);
    setCell(st.cells.memory, v('pod_memory_working_set_bytes'), formatBytes);
    setCell(st.cells.memoryLimit, v('pod_memory_limit_bytes'), formatBytes);
    st.cells.sampled.textContent = shortTime(newest);
    st.cells.sampled.title = rfc3339(newest);
    st.row.classList.remove('ended');
  }

  // ---- the session ---------------------------------------------------------------------------

  function readForm() {
    const data = new FormData(form);
    const selector = {};
    for (const f of SELECTOR_FIELDS) {
      const v = String(data.get(f) || '').trim();
      if (v) selector[f] = v;
    }
    const tailText = String(data.get('tail') || '').trim();
    const tail = tailText === '' ? DEFAULT_TAIL : Number(tailText);
    return {
      selector,
      tail: Number.isInteger(tail) && tail >= 0 && tail <= 4294967295 ? tail : DEFAULT_TAIL,
      contains: String(data.get('contains') || ''),
      follow: data.get('follow') !== null,
    };
  }

  /** The address bar names the view (never the token), so the link can be shared. */
  function shareableUrl(p) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(p.selector)) q.set(k, v);
    if (p.tail !== DEFAULT_TAIL) q.set('tail', String(p.tail));
    if (p.contains) q.set('contains', p.contains);
    if (!p.follow) q.set('follow', 'false');
    if (maxLines !== 10000) q.set('max_lines', String(maxLines));
    const s = q.toString();
    return `${location.pathname}${s ? `?${s}` : ''}`;
  }

  function subscribeRequests(p) {
    const logs = {
      op: 'subscribe',
      id: LOG_SUB,
      selector: p.selector,
      tail: p.tail,
      follow: p.follow,
    };
    if (p.contains) logs.contains = p.contains;
    const metricsSelector = { kind: 'metrics', container: 'resources' };
    for (const f of METRICS_FIELDS) if (p.selector[f] !== undefined) metricsSelector[f] = p.selector[f];
    // tail > 0: a viewer joining a watched pod gets the newest kept sample at once (§2.6).
    const metrics = {
      op: 'subscribe', id: METRICS_SUB, selector: metricsSelector, tail: 1, follow: p.follow,
    };
    return [logs, metrics];
  }

  function watchingText() {
    const logs = logStreamCount();
    const pods = streamsById.size - logs;
    return `Watching ${plural(logs, 'log stream', 'log streams')}` +
      `${pods ? ` and the resources of ${plural(pods, 'pod', 'pods')}` : ''}.`;
  }

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    const gen = ++generation;
    const url = `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/v1/subscribe`;
    const protocols = token ? ['logrelay.v1', `bearer.${token}`] : ['logrelay.v1'];
    let ws;
    try {
      ws = new WebSocket(url, protocols);
    } catch (e) {
      setStatus(`Cannot connect: ${e.message}`, 'bad');
      return;
    }
    ws.binaryType = 'arraybuffer';
    socket = ws;
    streamsById = new Map();
    let welcomed = false;
    setStatus('Connecting…', 'busy');
    stopButton.disabled = false;

    ws.onopen = () => {
      if (gen !== generation) return;
      for (const req of subscribeRequests(params)) ws.send(JSON.stringify(req));
    };
    ws.onmessage = (msg) => {
      if (gen !== generation) return;
      if (typeof msg.data === 'string') {
        let event;
        try {
          event = JSON.parse(msg.data);
        } catch (e) {
          showError(`Unreadable event from the relay: ${e.message}`);
          return;
        }
        if (event.event === 'welcome') {
          welcomed = true;
          retryMs = 1000;
        }
        onEvent(event);
      } else {
        onBatch(msg.data);
      }
    };
    ws.onclose = (ev) => {
      if (gen !== generation) return;
      socket = null;
      stopButton.disabled = true;
      const name = CLOSE_CODES[ev.code] || 'closed';
      const reason = ev.reason ? `: ${ev.reason}` : '';
      let text = `Disconnected (${ev.code} ${name})${reason}.`;
      if (!welcomed && ev.code === 1006) {
        text = 'The relay refused the session or cannot be reached (1006). Without a valid ' +
          'token a relay answers HTTP 401 before the upgrade: check the token.';
      }
      if (ev.code === 4001 || ev.code === 4003 || ev.code === 4004 || ev.code === 4008) {
        showError(text);
      }
      if (welcomed && RETRY_CODES.has(ev.code)) {
        const wait = retryMs;
        retryMs = Math.min(retryMs * 2, 30000);
        text += ` Reconnecting in ${Math.round(wait / 1000)} s.`;
        retryTimer = setTimeout(() => {
          if (gen === generation) connect();
        }, wait);
      }
      setStatus(text, 'bad');
    };
  }

  function stop() {
    generation++;
    clearTimeout(retryTimer);
    retryTimer = null;
    if (socket) socket.close(1000, 'viewer stopped');
    socket = null;
    stopButton.disabled = true;
    setStatus('Stopped.', 'idle');
  }

  function streamState(id) {
    let st = streamsById.get(id);
    if (!st) {
      // A batch always follows its `stream` event; this only guards against a broken relay.
      st = { key: `#${id}`, labels: null, kind: 'log', name: `stream ${id}`, epoch: null, shown: [], head: 0, droppedThrough: -1n };
      streamsById.set(id, st);
    }
    return st;
  }

  function onEvent(e) {
    switch (e.event) {
      case 'welcome':
        setStatus(`Connected to the relay as org ${e.org}.`, 'ok');
        break;
      case 'subscribed':
        if (e.id === LOG_SUB) setStatus(watchingText(), 'ok');
        break;
      case 'stream': {
        if (streamsById.has(e.stream)) break; // repeated on re-announcement: idempotent
        const key = streamKey(e.labels);
        let st = streamsByKey.get(key);
        if (!st) {
          st = { key, epoch: null, shown: [], head: 0, droppedThrough: -1n };
          streamsByKey.set(key, st);
        }
        st.labels = e.labels;
        st.kind = e.labels.kind === 'metrics' ? 'metrics' : 'log';
        st.name = streamName(e.labels);
        streamsById.set(e.stream, st);
        if (st.kind === 'metrics') {
          metricsRow(st);
        } else {
          logEl.classList.toggle('multi', logStreamCount() > 1);
          const l = e.labels;
          append([marker('stream', `stream ${st.name} (namespace ${l.namespace}, node ${l.node}, restart ${l.restart})`)]);
        }
        setStatus(watchingText(), 'ok');
        break;
      }
      case 'gap': {
        const st = streamState(e.stream);
        const why = GAP_REASONS[e.reason] || e.reason;
        const what = e.exact === false
          ? 'lines missed, how many is unknown'
          : `${plural(e.lines, 'line', 'lines')} (${formatBytes(e.bytes)}) missed`;
        append([marker('gap', `${st.name}: ${what}: ${why}.`)]);
        break;
      }
      case 'renumbered': {
        const st = streamState(e.stream);
        if (st.kind === 'log') append([marker('live', `${st.name}: renumbered by its agent, nothing missed.`)]);
        break;
      }
      case 'live': {
        const st = streamState(e.stream);
        if (st.kind === 'log') append([marker('live', `${st.name}: backlog complete, live from here.`)]);
        break;
      }
      case 'end': {
        const st = streamState(e.stream);
        if (st.kind === 'metrics') {
          if (st.row) st.row.classList.add('ended');
        } else {
          append([marker('end', `${st.name}: ${e.reason === 'complete' ? 'backlog read' : `ended (${e.reason})`}.`)]);
        }
        streamsById.delete(e.stream);
        logEl.classList.toggle('multi', logStreamCount() > 1);
        if (!params.follow && e.reason === 'complete' && logStreamCount() === 0) {
          setStatus('Backlog read. Not following: tick follow and press Watch to see new lines.', 'ok');
        }
        break;
      }
      case 'paused': {
        const st = streamState(e.stream);
        const why = e.reason === 'agent_disconnected' ? 'its node agent disconnected' : e.reason;
        if (st.kind === 'log') append([marker('gap', `${st.name}: paused, ${why}; waiting for it to come back.`)]);
        break;
      }
      case 'resumed': {
        const st = streamState(e.stream);
        if (st.kind === 'log') append([marker('live', `${st.name}: agent back, resumed.`)]);
        break;
      }
      case 'error': {
        const which = e.id === METRICS_SUB ? 'pod resources: ' : '';
        const text = `${which}${e.code}: ${e.message}`;
        showError(text);
        setStatus(`The relay refused a request: ${e.message}`, 'bad');
        break;
      }
      default:
        break; // unsubscribed, streams, and events of later versions
    }
  }

  function onBatch(buffer) {
    let batch;
    try {
      batch = decodeBatch(buffer);
    } catch (e) {
      showError(`Unreadable batch from the relay: ${e.message}`);
      return;
    }
    const { header } = batch;
    const st = streamState(header.stream);
    if (header.kind === KIND_GAP) {
      const lost = batch.gapBytes > 0n ? ` (${formatBytes(batch.gapBytes)})` : '';
      const text = header.count > 0
        ? `${st.name}: ${plural(header.count, 'line', 'lines')}${lost} lost at the agent ` +
          `(its buffer was full), seq ${header.firstSeq}–${header.firstSeq + BigInt(header.count) - 1n}.`
        : `${st.name}: ${formatBytes(batch.gapBytes)} rotated away before the agent read them.`;
      append([marker('gap', text)]);
      return;
    }
    if (st.kind === 'metrics') {
      updateMetrics(st, batch.lines);
      return;
    }
    const tail = [];
    placeLines(st, header.epoch, batch.lines, (header.flags & FLAG_BACKFILL) !== 0, tail);
    if (tail.length) append(tail);
    else afterGrowth();
  }

  function start() {
    params = readForm();
    token = String(new FormData(form).get('token') || '').trim();
    history.replaceState(null, '', shareableUrl(params));
    generation++;
    if (socket) socket.close(1000, 'viewer changed its selection');
    socket = null;
    streamsByKey.clear();
    metricsRows.replaceChildren();
    metricsEl.hidden = true;
    logEl.classList.remove('multi');
    clearErrors();
    clearView();
    retryMs = 1000;
    connect();
  }

  // ---- start-up ------------------------------------------------------------------------------

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    start();
  });
  stopButton.addEventListener('click', stop);
  $('clear').addEventListener('click', clearView);

  for (const f of [...SELECTOR_FIELDS, 'tail', 'contains']) {
    const v = query.get(f);
    if (v !== null) form.elements[f].value = v;
  }
  const follow = query.get('follow');
  if (follow !== null) form.elements.follow.checked = !/^(false|0|no|off)$/i.test(follow);

  // The token may come in the fragment, which the browser never sends; drop it from the
  // address bar (and history) at once.
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.has('token')) {
    form.elements.token.value = fragment.get('token');
    history.replaceState(null, '', `${location.pathname}${location.search}`);
  }

  // A link that names a view opens it live.
  if (location.search.length > 1 || form.elements.token.value) start();
})();
