// Canonical msgpack for symbiote (DESIGN §3), in plain JavaScript, with no dependencies.
//
// encode(x) packs maps with keys sorted by their UTF-8 bytes at every depth, strings as
// msgpack str, Uint8Array as bin, integers in their smallest encoding and floats as float64.
// decode(bytes) accepts only input that is exactly encode() of what it decodes to, so two
// different byte strings never stand for the same event.
//
// Values: null, booleans, strings, Uint8Array (bin), arrays, plain objects (maps; decoded
// maps have no prototype). Integers are Numbers when safe, BigInts beyond 2^53. A Number
// that is an integer encodes as an int; to force a float64 for an integral value (or -0)
// wrap it: new Float64(1). decode() returns Float64 for integral floats so that
// decode → encode reproduces the input exactly.

export const DOMAIN = new TextEncoder().encode("symbiote/v1\u0000");
const MAX_DEPTH = 64;
const UTF8 = new TextEncoder();
const UTF8_STRICT = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

export class Float64 {
  constructor(value) {
    this.value = Number(value);
  }
  valueOf() {
    return this.value;
  }
  toJSON() {
    return this.value;
  }
}

export class CanonError extends Error {
  constructor(message) {
    super(message);
    this.name = "CanonError";
  }
}

class Writer {
  constructor() {
    this.buf = new Uint8Array(256);
    this.len = 0;
  }
  ensure(n) {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }
  byte(b) {
    this.ensure(1);
    this.buf[this.len++] = b;
  }
  bytes(arr) {
    this.ensure(arr.length);
    this.buf.set(arr, this.len);
    this.len += arr.length;
  }
  view(n, fn) {
    this.ensure(n);
    fn(new DataView(this.buf.buffer, this.len, n));
    this.len += n;
  }
  result() {
    return this.buf.slice(0, this.len);
  }
}

function compareBytes(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) return a[i] - b[i];
  }
  return a.length - b.length;
}

function isPlainObject(v) {
  if (v === null || typeof v !== "object") return false;
  const proto = Object.getPrototypeOf(v);
  return proto === null || proto === Object.prototype;
}

function writeInt(w, n) {
  // n: BigInt
  if (n >= 0n) {
    if (n < 128n) w.byte(Number(n));
    else if (n < 256n) { w.byte(0xcc); w.byte(Number(n)); }
    else if (n < 65536n) { w.byte(0xcd); w.view(2, (d) => d.setUint16(0, Number(n))); }
    else if (n < 4294967296n) { w.byte(0xce); w.view(4, (d) => d.setUint32(0, Number(n))); }
    else if (n < 18446744073709551616n) { w.byte(0xcf); w.view(8, (d) => d.setBigUint64(0, n)); }
    else throw new CanonError("integer out of msgpack range");
  } else {
    if (n >= -32n) w.byte(Number(n) & 0xff);
    else if (n >= -128n) { w.byte(0xd0); w.view(1, (d) => d.setInt8(0, Number(n))); }
    else if (n >= -32768n) { w.byte(0xd1); w.view(2, (d) => d.setInt16(0, Number(n))); }
    else if (n >= -2147483648n) { w.byte(0xd2); w.view(4, (d) => d.setInt32(0, Number(n))); }
    else if (n >= -9223372036854775808n) { w.byte(0xd3); w.view(8, (d) => d.setBigInt64(0, n)); }
    else throw new CanonError("integer out of msgpack range");
  }
}

function writeFloat(w, x) {
  w.byte(0xcb);
  w.view(8, (d) => d.setFloat64(0, x));
}

function writeLength(w, n, fix, fixMax, codes) {
  if (fix !== null && n <= fixMax) w.byte(fix | n);
  else if (codes[0] !== null && n < 256) { w.byte(codes[0]); w.byte(n); }
  else if (n < 65536) { w.byte(codes[1]); w.view(2, (d) => d.setUint16(0, n)); }
  else if (n < 4294967296) { w.byte(codes[2]); w.view(4, (d) => d.setUint32(0, n)); }
  else throw new CanonError("too long for msgpack");
}

function writeStr(w, s) {
  if (typeof s.isWellFormed === "function" && !s.isWellFormed()) {
    throw new CanonError("string is not well-formed UTF-16 (lone surrogate)");
  }
  const bytes = UTF8.encode(s);
  writeLength(w, bytes.length, 0xa0, 31, [0xd9, 0xda, 0xdb]);
  w.bytes(bytes);
}

function write(w, v, depth) {
  if (depth > MAX_DEPTH) throw new CanonError("nested too deeply");
  if (v === null || v === undefined) {
    if (v === undefined) throw new CanonError("undefined cannot be encoded");
    w.byte(0xc0);
  } else if (v === false) w.byte(0xc2);
  else if (v === true) w.byte(0xc3);
  else if (typeof v === "bigint") writeInt(w, v);
  else if (typeof v === "number") {
    if (Number.isInteger(v) && !Object.is(v, -0)) {
      if (!Number.isSafeInteger(v)) throw new CanonError("unsafe integer Number; use a BigInt");
      writeInt(w, BigInt(v));
    } else writeFloat(w, v);
  } else if (v instanceof Float64) writeFloat(w, v.value);
  else if (typeof v === "string") writeStr(w, v);
  else if (v instanceof Uint8Array) {
    writeLength(w, v.length, null, 0, [0xc4, 0xc5, 0xc6]);
    w.bytes(v);
  } else if (v instanceof ArrayBuffer) write(w, new Uint8Array(v), depth);
  else if (Array.isArray(v)) {
    writeLength(w, v.length, 0x90, 15, [null, 0xdc, 0xdd]);
    for (const item of v) write(w, item, depth + 1);
  } else if (isPlainObject(v)) {
    const entries = Object.keys(v).map((k) => [UTF8.encode(k), k]);
    entries.sort((a, b) => compareBytes(a[0], b[0]));
    writeLength(w, entries.length, 0x80, 15, [null, 0xde, 0xdf]);
    for (const [keyBytes, key] of entries) {
      writeLength(w, keyBytes.length, 0xa0, 31, [0xd9, 0xda, 0xdb]);
      w.bytes(keyBytes);
      write(w, v[key], depth + 1);
    }
  } else {
    throw new CanonError("type not allowed in canonical msgpack: " + Object.prototype.toString.call(v));
  }
}

/** Canonical msgpack bytes of a value. */
export function encode(value) {
  const w = new Writer();
  write(w, value, 0);
  return w.result();
}

class Reader {
  constructor(bytes) {
    this.b = bytes;
    this.d = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.i = 0;
  }
  need(n) {
    if (this.i + n > this.b.length) throw new CanonError("truncated msgpack");
  }
  u8() { this.need(1); return this.b[this.i++]; }
  u16() { this.need(2); const x = this.d.getUint16(this.i); this.i += 2; return x; }
  u32() { this.need(4); const x = this.d.getUint32(this.i); this.i += 4; return x; }
  take(n) {
    this.need(n);
    const out = this.b.slice(this.i, this.i + n);
    this.i += n;
    return out;
  }
}

function intValue(big) {
  return big >= -9007199254740991n && big <= 9007199254740991n ? Number(big) : big;
}

function floatValue(x) {
  return Number.isInteger(x) || Object.is(x, -0) ? new Float64(x) : x;
}

function readStr(r, n) {
  try {
    return UTF8_STRICT.decode(r.take(n));
  } catch (e) {
    throw new CanonError("invalid UTF-8 in str");
  }
}

function readMap(r, n, depth) {
  const out = Object.create(null);
  for (let k = 0; k < n; k++) {
    const key = read(r, depth + 1);
    if (typeof key !== "string") throw new CanonError("map keys must be strings");
    if (Object.prototype.hasOwnProperty.call(out, key)) throw new CanonError("duplicate map key");
    out[key] = read(r, depth + 1);
  }
  return out;
}

function readArray(r, n, depth) {
  const out = [];
  for (let k = 0; k < n; k++) out.push(read(r, depth + 1));
  return out;
}

function read(r, depth) {
  if (depth > MAX_DEPTH) throw new CanonError("nested too deeply");
  const t = r.u8();
  if (t <= 0x7f) return t;
  if (t >= 0xe0) return t - 0x100;
  if (t >= 0x80 && t <= 0x8f) return readMap(r, t & 0x0f, depth);
  if (t >= 0x90 && t <= 0x9f) return readArray(r, t & 0x0f, depth);
  if (t >= 0xa0 && t <= 0xbf) return readStr(r, t & 0x1f);
  switch (t) {
    case 0xc0: return null;
    case 0xc2: return false;
    case 0xc3: return true;
    case 0xc4: return r.take(r.u8());
    case 0xc5: return r.take(r.u16());
    case 0xc6: return r.take(r.u32());
    case 0xca: { r.need(4); const x = r.d.getFloat32(r.i); r.i += 4; return floatValue(x); }
    case 0xcb: { r.need(8); const x = r.d.getFloat64(r.i); r.i += 8; return floatValue(x); }
    case 0xcc: return r.u8();
    case 0xcd: return r.u16();
    case 0xce: return r.u32();
    case 0xcf: { r.need(8); const x = r.d.getBigUint64(r.i); r.i += 8; return intValue(x); }
    case 0xd0: { r.need(1); const x = r.d.getInt8(r.i); r.i += 1; return x; }
    case 0xd1: { r.need(2); const x = r.d.getInt16(r.i); r.i += 2; return x; }
    case 0xd2: { r.need(4); const x = r.d.getInt32(r.i); r.i += 4; return x; }
    case 0xd3: { r.need(8); const x = r.d.getBigInt64(r.i); r.i += 8; return intValue(x); }
    case 0xd9: return readStr(r, r.u8());
    case 0xda: return readStr(r, r.u16());
    case 0xdb: return readStr(r, r.u32());
    case 0xdc: return readArray(r, r.u16(), depth);
    case 0xdd: return readArray(r, r.u32(), depth);
    case 0xde: return readMap(r, r.u16(), depth);
    case 0xdf: return readMap(r, r.u32(), depth);
    default:
      throw new CanonError("msgpack type 0x" + t.toString(16) + " is not allowed (ext, timestamp or reserved)");
  }
}

/** Decode bytes, requiring that they are exactly the canonical encoding of the result. */
export function decode(bytes, maxSize = 256 * 1024) {
  if (!(bytes instanceof Uint8Array)) throw new CanonError("decode expects a Uint8Array");
  if (bytes.length > maxSize) throw new CanonError("message too large");
  const r = new Reader(bytes);
  const value = read(r, 0);
  if (r.i !== bytes.length) throw new CanonError("trailing bytes after msgpack value");
  const again = encode(value);
  if (compareBytes(again, bytes) !== 0) throw new CanonError("msgpack is not in canonical form");
  return value;
}

// -- envelopes ----------------------------------------------------------------------------

export const ENVELOPE_KEYS = ["v", "id", "type", "at", "actor", "corr", "cause", "body", "sigs"];

/** b"symbiote/v1\0" + canon([v, id, type, at, actor, corr, cause, body]) */
export function signingInput(ev) {
  const packed = encode([ev.v, ev.id, ev.type, ev.at, ev.actor, ev.corr, ev.cause, ev.body]);
  const out = new Uint8Array(DOMAIN.length + packed.length);
  out.set(DOMAIN, 0);
  out.set(packed, DOMAIN.length);
  return out;
}

/** SHA-256 of the signing input (WebCrypto), as a Uint8Array. */
export async function digest(ev) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", signingInput(ev)));
}

/** Canonical wire bytes of a whole envelope (with its sigs). */
export function toWire(ev) {
  const map = {};
  for (const k of ENVELOPE_KEYS) map[k] = k === "sigs" ? (ev.sigs || []).map((s) => ({ kid: s.kid, sig: s.sig })) : ev[k];
  return encode(map);
}

/** Decode canonical wire bytes into an envelope, checking its shape (not its signatures). */
export function fromWire(bytes) {
  const ev = decode(bytes);
  if (!isPlainObject(ev)) throw new CanonError("envelope is not a map");
  const keys = Object.keys(ev).sort();
  if (keys.join(",") !== [...ENVELOPE_KEYS].sort().join(",")) throw new CanonError("envelope keys differ from the contract");
  if (ev.v !== 1) throw new CanonError("unsupported envelope version");
  if (!isEventId(ev.id)) throw new CanonError("event id is not a UUID string");
  if (typeof ev.type !== "string" || typeof ev.actor !== "string" || !/^(agent|user|runtime|owner):/.test(ev.actor)) {
    throw new CanonError("bad type or actor");
  }
  if (typeof ev.at !== "number" || !Number.isInteger(ev.at) || ev.at < 0) throw new CanonError("bad time");
  for (const ref of ["corr", "cause"]) {
    if (ev[ref] !== null && !isEventId(ev[ref])) throw new CanonError(ref + " is not an event id");
  }
  if (!isPlainObject(ev.body)) throw new CanonError("body is not a map");
  if (!Array.isArray(ev.sigs)) throw new CanonError("sigs is not a list");
  return ev;
}

export function isEventId(x) {
  return typeof x === "string" && /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(x);
}

// -- small helpers --------------------------------------------------------------------------

let lastMs = 0;
let counter = 0;

/** A new UUIDv7 string (RFC 9562): 48-bit ms time, version 7, monotonic counter, random bits. */
export function uuidv7(nowMs = Date.now()) {
  let ms = nowMs;
  if (ms <= lastMs) {
    counter += 1;
    if (counter > 0xfff) { lastMs += 1; counter = 0; }
    ms = lastMs;
  } else {
    lastMs = ms;
    counter = 0;
  }
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  const t = BigInt(ms);
  for (let i = 0; i < 6; i++) b[i] = Number((t >> BigInt(8 * (5 - i))) & 0xffn);
  b[6] = 0x70 | ((counter >> 8) & 0x0f);
  b[7] = counter & 0xff;
  b[8] = 0x80 | (b[8] & 0x3f);
  const h = toHex(b);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export function toHex(bytes) {
  return Array.from(bytes, (x) => x.toString(16).padStart(2, "0")).join("");
}

export function fromHex(hex) {
  if (hex.length % 2 !== 0 || /[^0-9a-fA-F]/.test(hex)) throw new CanonError("not hex");
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

export function fromBase64(text) {
  const s = atob(text.replace(/-/g, "+").replace(/_/g, "/").replace(/\s/g, ""));
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

export function toBase64Url(bytes) {
  return toBase64(bytes).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** kid of a raw 32-byte Ed25519 public key: "ed25519:" + unpadded base64url. */
export function kidOf(rawPublicKey) {
  if (rawPublicKey.length !== 32) throw new CanonError("an Ed25519 public key has 32 bytes");
  return "ed25519:" + toBase64Url(rawPublicKey);
}

export function equalBytes(a, b) {
  return a.length === b.length && compareBytes(a, b) === 0;
}

/** JSON test vectors → values: {"$bin": hex} → Uint8Array, {"$f64": x} → Float64, {"$int": "n"} → BigInt. */
export function fromTagged(x) {
  if (Array.isArray(x)) return x.map(fromTagged);
  if (isPlainObject(x)) {
    const keys = Object.keys(x);
    if (keys.length === 1 && keys[0] === "$bin") return fromHex(x.$bin);
    if (keys.length === 1 && keys[0] === "$f64") return new Float64(x.$f64);
    if (keys.length === 1 && keys[0] === "$int") return intValue(BigInt(x.$int));
    const out = Object.create(null);
    for (const k of keys) out[k] = fromTagged(x[k]);
    return out;
  }
  return x;
}

/** A value for display: bin as hex, BigInt and Float64 as numbers (JSON-safe). */
export function toDisplay(x) {
  if (x instanceof Uint8Array) return "0x" + toHex(x);
  if (x instanceof Float64) return x.value;
  if (typeof x === "bigint") return x.toString();
  if (Array.isArray(x)) return x.map(toDisplay);
  if (isPlainObject(x)) {
    const out = Object.create(null);
    for (const k of Object.keys(x)) out[k] = toDisplay(x[k]);
    return out;
  }
  return x;
}
