// The batch format (docs/protocol.md §2, wire/src/batch.rs): decoding only, no DOM, no clock.

export const HEADER_LEN = 40;
const LINE_HEADER_LEN = 13;
const MAGIC = 0x4c; // 'L'
const VERSION = 1;
export const KIND_LOG = 1;
export const KIND_GAP = 3;
export const FLAG_BACKFILL = 1;
/** Header flag (wire/src/batch.rs `FLAG_COUNT_UNKNOWN`): a gap batch whose count is only a lower bound. */
export const FLAG_COUNT_UNKNOWN = 4;
export const LINE_STDERR = 1;
export const LINE_PARTIAL = 2;
export const LINE_TRUNCATED = 4;
export const LINE_SYSTEM = 8;
const U64_MAX = (1n << 64n) - 1n;
const SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const TWO32 = 4294967296;

const utf8 = new TextDecoder('utf-8', { fatal: false });

/**
 * Decodes one binary message. Checks what `BatchHeader::parse`, `batch::lines` and
 * `batch::gap_bytes` check, and throws an Error naming the fault otherwise.
 *
 * Epochs are decimal strings (exact); sequence numbers are Numbers, exact below 2^53, which the
 * agent's numbering (anchored at 2^32) never reaches — a batch beyond it is refused. A line's
 * time is `hi`/`lo` (the two 32-bit halves of its Unix nanoseconds, exact) and `ts` (their value
 * as a Number, within 256 ns: for ordering).
 */
export function decodeBatch(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes.length < HEADER_LEN) {
    throw new Error(`batch of ${bytes.length} bytes is shorter than its ${HEADER_LEN}-byte header`);
  }
  if (bytes[0] !== MAGIC) throw new Error(`bad batch magic 0x${bytes[0].toString(16)}`);
  if (bytes[1] !== VERSION) throw new Error(`unsupported batch version ${bytes[1]}`);
  const kind = bytes[2];
  if (kind !== KIND_LOG && kind !== KIND_GAP) throw new Error(`unknown batch kind ${kind}`);
  const view = new DataView(buffer);
  const firstSeq = view.getBigUint64(20, true);
  const count = view.getUint32(28, true);
  const bodyLen = view.getUint32(32, true);
  if (firstSeq + BigInt(count) > U64_MAX) throw new Error('sequence numbers of the batch overflow');
  if (firstSeq + BigInt(count) > SAFE) {
    throw new Error(`sequence number ${firstSeq} is beyond what this viewer numbers exactly (2^53)`);
  }
  if (bodyLen !== bytes.length - HEADER_LEN) {
    throw new Error(`batch body is ${bytes.length - HEADER_LEN} bytes but the header says ${bodyLen}`);
  }
  const header = {
    kind,
    flags: bytes[3],
    stream: Number(view.getBigUint64(4, true)),
    epoch: view.getBigUint64(12, true).toString(),
    firstSeq: Number(firstSeq),
    count,
  };
  if (kind === KIND_GAP) {
    if (bodyLen !== 8) throw new Error('gap batch body is not 8 bytes');
    return { header, gapBytes: Number(view.getBigUint64(HEADER_LEN, true)), lines: [] };
  }
  const lines = new Array(count);
  let at = HEADER_LEN;
  for (let index = 0; index < count; index++) {
    if (bytes.length - at < LINE_HEADER_LEN) throw new Error(`line record ${index} is malformed`);
    const lo = view.getUint32(at, true);
    const hi = view.getInt32(at + 4, true);
    const flags = bytes[at + 8];
    const len = view.getUint32(at + 9, true);
    const start = at + LINE_HEADER_LEN;
    if (bytes.length - start < len) throw new Error(`line record ${index} is malformed`);
    let end = start + len;
    const size = len;
    if (end > start && bytes[end - 1] === 0x0a) end--;
    if (end > start && bytes[end - 1] === 0x0d) end--;
    lines[index] = {
      seq: header.firstSeq + index,
      hi,
      lo,
      ts: hi * TWO32 + lo,
      flags,
      size,
      text: utf8.decode(bytes.subarray(start, end)),
    };
    at = start + len;
  }
  if (at !== bytes.length) throw new Error(`line record ${count} is malformed`);
  return { header, gapBytes: 0, lines };
}

/** Unix nanoseconds of `hi`/`lo` as a BigInt (exact). */
export function nanos(hi, lo) {
  return (BigInt(hi) << 32n) + BigInt(lo);
}
