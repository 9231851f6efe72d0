// The log view: a virtualized window over the buffer's list. Only the rows that fit the screen
// (plus one) exist in the DOM, whatever the buffer holds.
//
// The scroll container holds a sticky viewport (the rows) and a spacer that gives the scroll bar
// one row height per entry; the scroll position is turned into the index of the top row. This
// keeps scrolling exact by line whether rows wrap or not. Following, the window is the newest
// rows, anchored at the bottom; paused (the user scrolled up, pressed pause or jumped to a hit),
// it stays on the same entry however many arrive, are inserted before it or dropped.

import { indexOf, lowerBound } from './lines.js';

/** Tallest spacer used; longer lists scroll proportionally (browsers cap element heights). */
const MAX_SPACER_PX = 8000000;

export class LogView {
  /**
   * `scroller` contains `viewport` (rows) and `spacer`; `build(entry)` makes a row element;
   * `onMode({following, newLines})` hears of pauses, resumes and new lines while paused;
   * `onChange()` asks for a render (the user scrolled, the view was resized).
   */
  constructor({ scroller, viewport, spacer, buffer, build, onMode, onChange }) {
    this.scroller = scroller;
    this.viewport = viewport;
    this.spacer = spacer;
    this.buffer = buffer;
    this.build = build;
    this.onMode = onMode;
    this.following = true;
    this.anchor = null;
    this.newLines = 0;
    this.current = null;
    this.cache = new Map();
    this.rowH = 18;
    this.expectTop = -1;
    this.window = { start: 0, end: 0, bottom: true, list: null, len: 0 };
    this.dirty = true;
    scroller.addEventListener('scroll', () => {
      this.onScroll();
      onChange();
    });
    new ResizeObserver(() => {
      this.measure();
      this.refresh();
      onChange();
    }).observe(scroller);
    this.measure();
  }

  /** Row height in px (the CSS of an unwrapped row), measured once per layout change. */
  measure() {
    const probe = document.createElement('div');
    probe.className = 'row probe';
    probe.textContent = 'M';
    this.viewport.append(probe);
    const h = probe.getBoundingClientRect().height;
    probe.remove();
    if (h > 0) this.rowH = h;
    this.viewport.style.height = `${this.scroller.clientHeight}px`;
  }

  /** Rows that fit the screen. */
  get visibleRows() {
    return Math.max(1, Math.floor(this.scroller.clientHeight / this.rowH));
  }

  /** Rows are rebuilt at the next render (a toggle or the search changed). */
  restyle() {
    this.cache = new Map();
    this.refresh();
  }

  invalidate() {
    this.dirty = true;
  }

  /** After `buffer.flush()`: counts new lines while paused. */
  update(result) {
    if (!result) return;
    if (!this.following) {
      this.newLines += result.added;
      this.onMode({ following: false, newLines: this.newLines });
    }
    this.dirty = true;
  }

  follow() {
    this.following = true;
    this.anchor = null;
    this.newLines = 0;
    this.onMode({ following: true, newLines: 0 });
    this.dirty = true;
  }

  /** Stops at the entry now at the top of the screen. */
  pause() {
    if (!this.following) return;
    const list = this.buffer.list;
    this.anchor = list[this.window.list === list ? this.window.start : Math.max(0, list.length - this.visibleRows)] || null;
    this.following = false;
    this.newLines = 0;
    this.onMode({ following: false, newLines: 0 });
    this.dirty = true;
  }

  /** Shows entry `index` of the list in the middle of the screen, paused, marked current. */
  reveal(index) {
    const list = this.buffer.list;
    if (index < 0 || index >= list.length) return;
    if (this.following) {
      this.following = false;
      this.newLines = 0;
      this.onMode({ following: false, newLines: 0 });
    }
    this.current = list[index];
    this.anchor = list[Math.max(0, index - Math.floor(this.visibleRows / 2))];
    this.restyle();
  }

  /** Index in the list of the entry at the top of the screen. */
  topIndex() {
    const w = this.window;
    return w.list === this.buffer.list ? w.start : 0;
  }

  geometry(total) {
    const clientH = this.scroller.clientHeight;
    const scrollable = Math.max(0, total - this.visibleRows);
    const px = scrollable * this.rowH;
    const scale = px > MAX_SPACER_PX ? px / MAX_SPACER_PX : 1;
    return { clientH, scrollable, spacer: px / scale, scale };
  }

  onScroll() {
    const top = this.scroller.scrollTop;
    if (this.expectTop >= 0 && Math.abs(top - this.expectTop) <= 1) return;
    this.expectTop = -1;
    const list = this.buffer.list;
    const g = this.geometry(list.length);
    if (top >= g.spacer - 2) {
      if (!this.following) this.follow();
    } else {
      const index = Math.min(g.scrollable, Math.round((top * g.scale) / this.rowH));
      this.anchor = list[index] || null;
      if (this.following) {
        this.following = false;
        this.newLines = 0;
        this.onMode({ following: false, newLines: 0 });
      }
    }
    this.dirty = true;
  }

  /** Brings the DOM in line with the buffer, if anything changed. */
  render() {
    if (!this.dirty) return;
    this.dirty = false;
    const list = this.buffer.list;
    const total = list.length;
    const g = this.geometry(total);
    const rows = this.visibleRows + 1;
    let start;
    let bottom;
    if (this.following) {
      start = Math.max(0, total - rows);
      // Anchored at the bottom once the rows fill the screen; before, they start at the top.
      bottom = total >= this.visibleRows;
    } else {
      let index = 0;
      if (this.anchor) {
        index = indexOf(list, this.anchor);
        if (index < 0) index = lowerBound(list, this.anchor);
      }
      start = Math.max(0, Math.min(index, g.scrollable));
      this.anchor = list[start] || null;
      bottom = false;
    }
    const end = Math.min(total, start + rows);
    this.spacer.style.height = `${g.spacer}px`;
    const top = this.following ? g.spacer : (start * this.rowH) / g.scale;
    if (Math.abs(this.scroller.scrollTop - top) > 1) {
      this.expectTop = top;
      this.scroller.scrollTop = top;
    }
    const w = this.window;
    if (w.list === list && w.start === start && w.end === end && w.bottom === bottom && w.len === total &&
        w.first === list[start] && w.last === list[end - 1] && !w.stale) {
      return;
    }
    const cache = new Map();
    const els = [];
    for (let i = start; i < end; i++) {
      const e = list[i];
      let el = this.cache.get(e);
      if (!el) el = this.build(e, e === this.current);
      cache.set(e, el);
      els.push(el);
    }
    this.cache = cache;
    this.viewport.classList.toggle('bottom', bottom);
    this.viewport.replaceChildren(...els);
    this.window = { list, start, end, bottom, len: total, first: list[start], last: list[end - 1] };
  }

  /** Forces the next render to rebuild the window even if the same entries are in it. */
  refresh() {
    this.window.stale = true;
    this.dirty = true;
  }
}
