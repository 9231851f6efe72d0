// The merged buffer of the live viewer: every source's lines and markers in one list, in time
// order, each `(source, epoch, seq)` once, bounded in entries and in (estimated) bytes. Pure: no
// DOM, no clock, no I/O — the page calls `flush()` once per animation frame and renders a window
// of `list`.
//
// Order: timestamp, then source, then sequence number, then arrival. Lines arrive per source in
// sequence order, mostly in time order too, so each flush sorts a nearly sorted batch (TimSort:
// close to linear) and merges it into the buffer's tail; only a backlog older than what is held
// (another pod's history arriving after the first pod's) touches more than the tail.
//
// When full, the oldest entries go first (the viewer's own evictions, counted apart from the
// losses the relay and the agents report).

import { strip } from './ansi.js';

/** Estimated bytes an entry holds besides its text (object, fields, caches). */
const ENTRY_OVERHEAD = 160;

export const LINE = 0;
export const MARK = 1;

/** Entries in order: time, source, sequence, arrival. */
export function compare(a, b) {
  return a.ts - b.ts || a.o - b.o || a.seq - b.seq || a.n - b.n;
}

/** First index of `list` whose entry is not before `entry`. */
export function lowerBound(list, entry) {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (compare(list[mid], entry) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Index of `entry` in `list` (sorted), or -1. */
export function indexOf(list, entry) {
  const i = lowerBound(list, entry);
  return list[i] === entry ? i : -1;
}

/** What the page shows and searches of an entry: its text without escape sequences. */
export function plain(e) {
  if (e.plain === undefined) e.plain = strip(e.text);
  return e.plain;
}

/**
 * A search over the plain text of lines: `{test(text), ranges(text)}` or null for an empty
 * query; throws a SyntaxError for a regular expression that does not compile.
 */
export function matcher(query, { regex = false, caseSensitive = false } = {}) {
  if (!query) return null;
  const source = regex ? query : query.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const flags = caseSensitive ? '' : 'i';
  const once = new RegExp(source, flags);
  const all = new RegExp(source, `${flags}g`);
  return {
    query,
    test: (text) => once.test(text),
    ranges(text) {
      const out = [];
      all.lastIndex = 0;
      for (let m = all.exec(text); m; m = all.exec(text)) {
        if (m[0].length === 0) {
          all.lastIndex++;
          continue;
        }
        out.push([m.index, m.index + m[0].length]);
        if (out.length >= 256) break;
      }
      return out;
    },
  };
}

export class LineBuffer {
  /** `maxLines` entries and `maxBytes` estimated bytes at most. */
  constructor({ maxLines = 100000, maxBytes = 64 * 1024 * 1024 } = {}) {
    this.maxLines = maxLines;
    this.maxBytes = maxBytes;
    this.clear();
  }

  /** Forgets every entry, source and count. */
  clear() {
    /** Entries in order. */
    this.items = [];
    /** Entries added since the last flush, in arrival order. */
    this.pending = [];
    this.pendingBytes = 0;
    this.bytes = 0;
    /** The viewer's own evictions: lines (and their message bytes) dropped to stay bounded. */
    this.evictedLines = 0;
    this.evictedBytes = 0;
    this.n = 0;
    /** Sources by key. */
    this.sources = new Map();
    this.search = null;
    this.hitGen = 0;
    this.hits = 0;
    this.only = false;
    /** With `only`: the hits and markers of `items`, in order. */
    this.shown = [];
  }

  /** The entries the page shows: all of them, or only hits and markers. */
  get list() {
    return this.only ? this.shown : this.items;
  }

  /** The state of a source (one stream, by its labels), made on first use. */
  source(key, init) {
    let s = this.sources.get(key);
    if (!s) {
      s = {
        key,
        idx: this.sources.size,
        epochs: new Map(),
        /** The newest epoch seen and the highest sequence number in it: where to resume. */
        epoch: null,
        hwm: -1,
        lastTs: null,
        lines: 0,
        ...init,
      };
      this.sources.set(key, s);
    }
    return s;
  }

  /**
   * Adds a line of `src` in `epoch` unless it was already added (or was older than what the
   * buffer dropped of that source). Returns false for a duplicate.
   */
  addLine(src, epoch, line, backfill) {
    let ep = src.epochs.get(epoch);
    if (!ep) {
      ep = { hwm: -1, have: new Set(), dropped: -1 };
      src.epochs.set(epoch, ep);
    }
    const seq = line.seq;
    if (seq <= ep.dropped || ep.have.has(seq)) return false;
    ep.have.add(seq);
    if (seq > ep.hwm) ep.hwm = seq;
    if (src.epoch === null || src.epoch === epoch || !backfill) {
      if (src.epoch !== epoch) {
        src.epoch = epoch;
        src.hwm = -1;
      }
      if (seq > src.hwm) {
        src.hwm = seq;
        src.lastTs = line.ts;
        src.lastHi = line.hi;
        src.lastLo = line.lo;
      }
    }
    const entry = {
      t: LINE,
      ts: line.ts,
      o: src.idx,
      seq,
      n: this.n++,
      src,
      epoch,
      hi: line.hi,
      lo: line.lo,
      flags: line.flags,
      size: line.size,
      text: line.text,
      bf: backfill,
    };
    this.pending.push(entry);
    this.pendingBytes += ENTRY_OVERHEAD + 2 * line.text.length;
    src.lines++;
    return true;
  }

  /**
   * Adds a marker (`cls`: gap, end, live, pause, error, conn, info). With a source, it sits
   * right after that source's newest line (or at `ts` before it has any); without, at `ts`.
   */
  addMarker(src, cls, text, ts) {
    const entry = {
      t: MARK,
      ts: src && src.lastTs !== null ? src.lastTs : ts,
      o: src ? src.idx : -1,
      seq: src ? src.hwm + 0.5 : 0,
      n: this.n++,
      src,
      cls,
      text,
    };
    this.pending.push(entry);
    this.pendingBytes += ENTRY_OVERHEAD + 2 * text.length;
    return entry;
  }

  /** Entries waiting for the next flush. */
  get pendingCount() {
    return this.pending.length;
  }

  /**
   * Merges what arrived into the buffer, in order, then drops the oldest entries beyond the
   * bounds. Returns null when nothing arrived, else `{added, at, evicted}`: how many entries
   * arrived, the index in `items` of the first one (after eviction), and how many were dropped
   * from the front.
   */
  flush() {
    const pending = this.pending;
    if (!pending.length) return null;
    this.pending = [];
    pending.sort(compare);
    const items = this.items;
    let at;
    if (!items.length || compare(items[items.length - 1], pending[0]) <= 0) {
      at = items.length;
      for (const e of pending) items.push(e);
    } else {
      // Merge in place from the end: only entries after the first arrival's place move, and
      // nothing is allocated but the room for the arrivals.
      at = lowerBound(items, pending[0]);
      let i = items.length - 1;
      let j = pending.length - 1;
      let k = items.length + pending.length - 1;
      for (let x = 0; x < pending.length; x++) items.push(null);
      while (j >= 0) {
        if (i >= at && compare(items[i], pending[j]) > 0) items[k--] = items[i--];
        else items[k--] = pending[j--];
      }
    }
    this.bytes += this.pendingBytes;
    this.pendingBytes = 0;
    if (this.search) {
      for (const e of pending) if (this.isHit(e)) this.hits++;
    }
    const appended = at === items.length - pending.length;
    const evicted = this.evict();
    if (this.only) {
      if (appended) {
        this.dropShownFront();
        for (const e of pending) if (!e.ev && this.isShown(e)) this.shown.push(e);
      } else {
        this.rebuildShown();
      }
    }
    return { added: pending.length, at: Math.max(0, at - evicted), evicted };
  }

  /** Drops the oldest entries until both bounds hold; returns how many. */
  evict() {
    const items = this.items;
    let k = 0;
    let bytes = this.bytes;
    while (k < items.length && (items.length - k > this.maxLines || bytes > this.maxBytes)) {
      const e = items[k++];
      bytes -= ENTRY_OVERHEAD + 2 * e.text.length;
      e.ev = true;
      if (e.t === LINE) {
        const ep = e.src.epochs.get(e.epoch);
        if (ep) {
          ep.have.delete(e.seq);
          if (e.seq > ep.dropped) ep.dropped = e.seq;
          if (ep.have.size === 0 && e.epoch !== e.src.epoch) e.src.epochs.delete(e.epoch);
        }
        e.src.lines--;
        this.evictedLines++;
        this.evictedBytes += e.size;
        if (this.search && this.isHit(e)) this.hits--;
      }
    }
    if (k) items.splice(0, k);
    this.bytes = bytes;
    return k;
  }

  isHit(e) {
    if (!this.search || e.t !== LINE) return false;
    if (e.hg !== this.hitGen) {
      e.hg = this.hitGen;
      e.hit = this.search.test(plain(e));
    }
    return e.hit;
  }

  isShown(e) {
    return e.t === MARK || this.isHit(e);
  }

  /** Sets the search (a `matcher` or null) and whether only its hits (and markers) show. */
  setSearch(search, only) {
    this.search = search;
    this.hitGen++;
    this.hits = 0;
    if (search) for (const e of this.items) if (this.isHit(e)) this.hits++;
    this.only = Boolean(search) && only;
    this.rebuildShown();
  }

  rebuildShown() {
    this.shown = this.only ? this.items.filter((e) => this.isShown(e)) : [];
  }

  dropShownFront() {
    let k = 0;
    while (k < this.shown.length && this.shown[k].ev) k++;
    if (k) this.shown.splice(0, k);
  }

  /**
   * Empties the view (the user's "clear"): every line held counts as already shown, so a source
   * that sends it again (a reconnect's backlog) does not bring it back. Not an eviction.
   */
  clearLines() {
    for (const s of this.sources.values()) {
      for (const ep of s.epochs.values()) {
        if (ep.hwm > ep.dropped) ep.dropped = ep.hwm;
        ep.have.clear();
      }
      s.lines = 0;
    }
    for (const e of this.items) e.ev = true;
    this.items = [];
    this.pending = [];
    this.pendingBytes = 0;
    this.bytes = 0;
    this.hits = 0;
    this.shown = [];
  }

  /** Removes every entry whose source `gone(src)` says goes, and those sources. */
  removeSources(gone) {
    const keep = [];
    let bytes = 0;
    for (const e of this.items) {
      if (e.src && gone(e.src)) {
        e.ev = true;
        if (this.search && this.isHit(e)) this.hits--;
      } else {
        keep.push(e);
        bytes += ENTRY_OVERHEAD + 2 * e.text.length;
      }
    }
    this.pending = this.pending.filter((e) => !(e.src && gone(e.src)));
    this.pendingBytes = this.pending.reduce((b, e) => b + ENTRY_OVERHEAD + 2 * e.text.length, 0);
    for (const [key, s] of this.sources) if (gone(s)) this.sources.delete(key);
    this.items = keep;
    this.bytes = bytes;
    this.rebuildShown();
  }

  /** The next (`dir` 1) or previous (-1) hit from index `from` of `list`, wrapping; or -1. */
  nextHit(from, dir) {
    const list = this.list;
    const n = list.length;
    if (!this.search || !n) return -1;
    for (let k = 1; k <= n; k++) {
      const i = (((from + dir * k) % n) + n) % n;
      if (this.isHit(list[i])) return i;
    }
    return -1;
  }
}
