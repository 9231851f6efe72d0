// ANSI escape sequences in log text (ECMA-48): SGR colours and styles become classes on text
// spans; every other control sequence is removed. Pure: strings in, plain data out. The page
// builds the spans with `textContent` and `className` only, so a sequence can never become
// markup or an inline style.

const ESC = '\x1b';

/** The xterm palette of the 16 classes `a-f0`…`a-f15`, for the nearest match of other colours. */
const PALETTE = [
  [0, 0, 0], [205, 0, 0], [0, 205, 0], [205, 205, 0], [0, 0, 238], [205, 0, 205], [0, 205, 205], [229, 229, 229],
  [127, 127, 127], [255, 0, 0], [0, 255, 0], [255, 255, 0], [92, 92, 255], [255, 0, 255], [0, 255, 255], [255, 255, 255],
];

function nearest(r, g, b) {
  let best = 0;
  let bestD = Infinity;
  for (let i = 0; i < PALETTE.length; i++) {
    const [pr, pg, pb] = PALETTE[i];
    const d = (pr - r) ** 2 + (pg - g) ** 2 + (pb - b) ** 2;
    if (d < bestD) {
      bestD = d;
      best = i;
    }
  }
  return best;
}

/** One of the 16 classes for a 256-colour index. */
export function colour256(n) {
  if (n < 16) return n;
  if (n < 232) {
    const v = n - 16;
    const level = (x) => (x === 0 ? 0 : 55 + x * 40);
    return nearest(level(Math.floor(v / 36)), level(Math.floor(v / 6) % 6), level(v % 6));
  }
  const grey = 8 + (n - 232) * 10;
  return nearest(grey, grey, grey);
}

/** One of the 16 classes for a 24-bit colour. */
export function colourRgb(r, g, b) {
  return nearest(r, g, b);
}

function freshStyle() {
  return { fg: -1, bg: -1, bold: false, dim: false, italic: false, underline: false, inverse: false, strike: false };
}

function classOf(s) {
  const c = [];
  if (s.fg >= 0) c.push(`a-f${s.fg}`);
  if (s.bg >= 0) c.push(`a-b${s.bg}`);
  if (s.bold) c.push('a-bold');
  if (s.dim) c.push('a-dim');
  if (s.italic) c.push('a-it');
  if (s.underline) c.push('a-ul');
  if (s.strike) c.push('a-st');
  if (s.inverse) c.push('a-inv');
  return c.join(' ');
}

/** Applies one SGR parameter list (`1;31`, `38;5;208`, `38:2::255:0:0`, empty = reset). */
function applySgr(style, params) {
  const p = params === '' ? [0] : params.split(/[;:]/).map((x) => (x === '' ? 0 : Number.parseInt(x, 10)));
  for (let i = 0; i < p.length; i++) {
    const n = p[i];
    if (Number.isNaN(n)) continue;
    if (n === 0) Object.assign(style, freshStyle());
    else if (n === 1) style.bold = true;
    else if (n === 2) style.dim = true;
    else if (n === 3) style.italic = true;
    else if (n === 4) style.underline = true;
    else if (n === 7) style.inverse = true;
    else if (n === 9) style.strike = true;
    else if (n === 21 || n === 22) { style.bold = false; style.dim = false; }
    else if (n === 23) style.italic = false;
    else if (n === 24) style.underline = false;
    else if (n === 27) style.inverse = false;
    else if (n === 29) style.strike = false;
    else if (n >= 30 && n <= 37) style.fg = n - 30;
    else if (n === 39) style.fg = -1;
    else if (n >= 40 && n <= 47) style.bg = n - 40;
    else if (n === 49) style.bg = -1;
    else if (n >= 90 && n <= 97) style.fg = n - 90 + 8;
    else if (n >= 100 && n <= 107) style.bg = n - 100 + 8;
    else if (n === 38 || n === 48) {
      let colour = -1;
      if (p[i + 1] === 5 && i + 2 < p.length) {
        colour = colour256(p[i + 2] & 255);
        i += 2;
      } else if (p[i + 1] === 2) {
        // `38;2;r;g;b`, or the colon form with a colour-space id: `38:2::r:g:b`.
        const rest = p.length - (i + 2);
        const skip = rest >= 4 && params.includes(':') ? 1 : 0;
        const [r, g, b] = p.slice(i + 2 + skip, i + 5 + skip);
        if (b !== undefined) colour = colourRgb(r & 255, g & 255, b & 255);
        i += 4 + skip;
      }
      if (colour >= 0) {
        if (n === 38) style.fg = colour;
        else style.bg = colour;
      }
    }
  }
}

/**
 * Splits `text` into styled segments `{text, cls}` (`cls` is '' for unstyled text) and removes
 * every escape sequence: SGR (`ESC [ … m`) sets the style; other CSI sequences, OSC strings
 * (`ESC ] … BEL` or `ESC ] … ESC \`) and two-character escapes are dropped. The segments'
 * texts, joined, are `strip(text)`.
 */
export function segments(text) {
  if (!text.includes(ESC)) return [{ text, cls: '' }];
  const out = [];
  const style = freshStyle();
  let cls = '';
  let run = '';
  let i = 0;
  const flush = () => {
    if (run) out.push({ text: run, cls });
    run = '';
  };
  while (i < text.length) {
    const e = text.indexOf(ESC, i);
    if (e < 0) {
      run += text.slice(i);
      break;
    }
    run += text.slice(i, e);
    const next = text[e + 1];
    if (next === '[') {
      let j = e + 2;
      while (j < text.length && !(text.charCodeAt(j) >= 0x40 && text.charCodeAt(j) <= 0x7e)) j++;
      if (j >= text.length) {
        i = text.length; // an unterminated sequence: dropped
        break;
      }
      if (text[j] === 'm') {
        const params = text.slice(e + 2, j);
        if (/^[0-9;:]*$/.test(params)) {
          flush();
          applySgr(style, params);
          cls = classOf(style);
        }
      }
      i = j + 1;
    } else if (next === ']') {
      const bel = text.indexOf('\x07', e + 2);
      const st = text.indexOf(`${ESC}\\`, e + 2);
      const ends = [bel >= 0 ? bel + 1 : Infinity, st >= 0 ? st + 2 : Infinity];
      const end = Math.min(...ends);
      i = end === Infinity ? text.length : end;
    } else {
      i = e + 2;
    }
  }
  flush();
  return out.length ? out : [{ text: '', cls: '' }];
}

/** `text` without escape sequences: what the page shows, searches and copies. */
export function strip(text) {
  if (!text.includes(ESC)) return text;
  return segments(text).map((s) => s.text).join('');
}

/**
 * Cuts styled segments at the boundaries of `ranges` (sorted, non-overlapping `[start, end, tag]`
 * over the stripped text), so each piece is one style and either inside one range or outside all:
 * `{text, cls, tag}` with `tag` the range's tag or null.
 */
export function cut(segs, ranges) {
  if (!ranges.length) return segs.map((s) => ({ text: s.text, cls: s.cls, tag: null }));
  const out = [];
  let pos = 0;
  let r = 0;
  for (const s of segs) {
    let at = 0;
    while (at < s.text.length) {
      while (r < ranges.length && ranges[r][1] <= pos + at) r++;
      const range = ranges[r];
      let end;
      let tag = null;
      if (range && range[0] <= pos + at) {
        end = Math.min(s.text.length, range[1] - pos);
        tag = range[2];
      } else {
        end = range ? Math.min(s.text.length, range[0] - pos) : s.text.length;
      }
      out.push({ text: s.text.slice(at, end), cls: s.cls, tag });
      at = end;
    }
    pos += s.text.length;
  }
  return out;
}
