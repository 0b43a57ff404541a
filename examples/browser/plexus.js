// A small Plexus client for the browser, over ws:// and wss://.
//
// Written for the browser example from docs/PROTOCOL.md (version 2): the
// handshake (with a session key proved by WebCrypto HMAC, §3.6), unary and
// one-way calls, server streams with flow-control credit, Ping answered,
// GoAway, and MessagePack arguments the way `#[plexus::service]` contracts
// pack them (none → nil, one → the value, several → an array). No build
// step, no dependencies: import it as an ES module. WebCrypto needs a secure
// context (https://, or a page from localhost/127.0.0.1) for keys.
//
//   import { connect, MsgPackService } from "./plexus.js";
//   const conn = await connect("ws://127.0.0.1:4000");   // { key: "hex" } for a keyed server
//   const greeter = new MsgPackService(conn, "greet.Greeter");
//   await greeter.unary("hello", "ada");            // "hello, ada!"
//   for await (const n of greeter.serverStream("countdown", 3)) { ... }
//
// Bytes ride binary WebSocket messages whose boundaries mean nothing: this
// client sends one message per batch of frames and concatenates what it
// receives.

const MAGIC = [0x50, 0x4c, 0x58, 0x53];
const VERSION = 2;
const HEADER = 10;
const KIND = { CALL_OPEN: 1, DATA: 2, END: 3, ACK: 4, REJECT: 5, CANCEL: 6, CREDIT: 7, PING: 8, PONG: 9, GOAWAY: 10 };
const FLAG = { END: 0x01, ONEWAY: 0x02, OP_NEW: 0x04, DEADLINE: 0x08 };
/** System codes of Rejects with SYSTEM and of GoAway (§8). */
export const SYSTEM_NAMES = {
  1: "NoSuchOperation", 2: "HandlerFailed", 3: "DeadlineExceeded", 4: "Cancelled", 5: "InvalidPayload",
  6: "GoingAway", 7: "Protocol", 8: "TooLarge", 9: "SessionClosed", 10: "ResourceExhausted",
  11: "PermissionDenied",
};
/** Refusal codes of the handshake (§3.2); any other code is "Other". */
export const REFUSAL_NAMES = {
  1: "VersionMismatch", 2: "SelfConnect", 3: "Rejected", 4: "TooManyConnections", 5: "Malformed",
  6: "ShuttingDown", 7: "KeyRequired", 8: "KeyMismatch", 9: "NotAllowed",
};
const KEY_EXTENSION = 1;
const KEY_ID_LEN = 8;
const NONCE_LEN = 32;
const PROOF_LEN = 32;
const PROOF_KIND = 2;
const MIN_HEX_KEY_LEN = 16;
const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * A connection or a call failed. `kind` says how: "Rejected" (the handler
 * said no: `code`, `rejectMessage`, `details`), a system name such as
 * "NoSuchOperation" or "PermissionDenied" (`system` true), "Refused" (the
 * listener refused the handshake: `code`, and `refusal` its name, such as
 * "KeyRequired" or "KeyMismatch"), "Untrusted" (the listener did not prove
 * this client's session key), "Timeout", "ConnectionLost", "CutOff" and
 * "AccessRevoked" (the peer's GoAway said ResourceExhausted or
 * PermissionDenied; `code` is its system code), "Closing", ...
 */
export class PlexusError extends Error {
  constructor(kind, message, { op = "", code = 0, details = new Uint8Array(), system = false, refusal = "" } = {}) {
    super(op ? `${op}: ${message}` : message);
    this.name = "PlexusError";
    this.kind = kind;
    this.op = op;
    this.code = code;
    this.rejectMessage = message;
    this.details = details;
    this.system = system;
    this.refusal = refusal;
  }
}

// -- bytes -------------------------------------------------------------------

class Writer {
  constructor() { this.bytes = []; }
  u8(v) { this.bytes.push(v & 0xff); }
  u16(v) { this.u8(v >>> 8); this.u8(v); }
  u32(v) { this.u16(v >>> 16); this.u16(v & 0xffff); }
  varint(v) {
    // Values here stay below 2^53; divide instead of shifting past 32 bits.
    while (v >= 0x80) { this.u8((v % 0x80) | 0x80); v = Math.floor(v / 0x80); }
    this.u8(v);
  }
  raw(b) { for (const x of b) this.bytes.push(x); }
  str(s) { const b = utf8.encode(s); this.varint(b.length); this.raw(b); }
  done() { return Uint8Array.from(this.bytes); }
}

function frame(kind, flags, id, payload) {
  const w = new Writer();
  w.u32(payload.length); w.u8(kind); w.u8(flags); w.u32(id); w.raw(payload);
  return w.done();
}

class Reader {
  constructor(bytes) { this.b = bytes; this.at = 0; }
  left() { return this.b.length - this.at; }
  u8() { if (this.at >= this.b.length) throw new Error("truncated"); return this.b[this.at++]; }
  varint() {
    let value = 0, scale = 1;
    for (let i = 0; i < 10; i++) {
      const byte = this.u8();
      value += (byte & 0x7f) * scale;
      if (byte < 0x80) return value;
      scale *= 0x80;
    }
    throw new Error("overlong varint");
  }
  take(n) { if (n > this.left()) throw new Error("truncated"); const out = this.b.subarray(this.at, this.at + n); this.at += n; return out; }
  str() { return fromUtf8.decode(this.take(this.varint())); }
  rest() { return this.take(this.left()); }
}

const be32 = (b, at) => ((b[at] << 24) >>> 0) + (b[at + 1] << 16) + (b[at + 2] << 8) + b[at + 3];

// -- session keys (§3.6) -----------------------------------------------------------

/**
 * A session key written in hex, read exactly as the Rust runtime's
 * `SessionKey::from_hex` reads it: an even number of hex digits, at least 16
 * bytes' worth, surrounding whitespace ignored. A Uint8Array is the key itself.
 */
export function parseKey(key) {
  if (key instanceof Uint8Array) {
    if (key.length === 0) throw new PlexusError("KeyFormat", "a session key is empty");
    return key;
  }
  if (typeof key !== "string") throw new PlexusError("KeyFormat", "a session key is hex text or a Uint8Array");
  const text = utf8.encode(key.trim());
  if (text.length % 2 !== 0) throw new PlexusError("KeyFormat", `a hex session key has an even number of digits, not ${text.length}`);
  const digit = (at) => {
    const c = String.fromCharCode(text[at]);
    if (!/^[0-9a-fA-F]$/.test(c)) throw new PlexusError("KeyFormat", `character ${at} of the session key is not a hex digit`);
    return parseInt(c, 16);
  };
  const bytes = new Uint8Array(text.length / 2);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (digit(2 * i) << 4) | digit(2 * i + 1);
  if (bytes.length < MIN_HEX_KEY_LEN) {
    throw new PlexusError("KeyFormat", `a session key of ${bytes.length} bytes is too short to be secret (at least ${MIN_HEX_KEY_LEN}; SessionKey::generate makes 32)`);
  }
  return bytes;
}

const concat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
};
const sameBytes = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

/**
 * The HMAC-SHA256 computations of the key proof, over WebCrypto. Node ids
 * are their 16 big-endian bytes. Exported for tests against the golden
 * vectors; `connect({ key })` uses them.
 */
export const keyProof = {
  async hmacKey(raw) {
    return crypto.subtle.importKey("raw", raw, { name: "HMAC", hash: "SHA-256" }, false, ["sign", "verify"]);
  },
  /** The key's public name: the first 8 bytes of HMAC(key, "plexus key id"). */
  async keyId(hmac) {
    return new Uint8Array(await crypto.subtle.sign("HMAC", hmac, utf8.encode("plexus key id"))).slice(0, KEY_ID_LEN);
  },
  input(role, dialer, listener, dialerNonce, listenerNonce) {
    return concat(utf8.encode(`plexus v2 key proof ${role}`), dialer, listener, dialerNonce, listenerNonce);
  },
  async listenerProof(hmac, dialer, listener, dialerNonce, listenerNonce) {
    return new Uint8Array(await crypto.subtle.sign("HMAC", hmac, this.input("listener", dialer, listener, dialerNonce, listenerNonce)));
  },
  /** Whether `tag` is the listener's proof for this handshake (WebCrypto's verify compares in constant time). */
  async verifyListener(hmac, tag, dialer, listener, dialerNonce, listenerNonce) {
    return crypto.subtle.verify("HMAC", hmac, tag, this.input("listener", dialer, listener, dialerNonce, listenerNonce));
  },
  /** The dialer's proof message, sent after the Welcome and before any frame. */
  async dialerProofMessage(hmac, dialer, listener, dialerNonce, listenerNonce) {
    const tag = new Uint8Array(await crypto.subtle.sign("HMAC", hmac, this.input("dialer", dialer, listener, dialerNonce, listenerNonce)));
    return concat(Uint8Array.from(MAGIC), Uint8Array.of(0, VERSION, PROOF_KIND), tag);
  },
};

/** The entries of a handshake's extension area (§3.5); a malformed area throws. */
function extensions(area) {
  const out = new Map();
  let at = 0;
  while (at < area.length) {
    if (area.length - at < 4) throw new PlexusError("Handshake", "truncated handshake extension header");
    const type = (area[at] << 8) | area[at + 1];
    const len = (area[at + 2] << 8) | area[at + 3];
    at += 4;
    if (area.length - at < len) throw new PlexusError("Handshake", "truncated handshake extension value");
    if (out.has(type)) throw new PlexusError("Handshake", `handshake extension type ${type} appears twice`);
    out.set(type, area.subarray(at, at + len));
    at += len;
  }
  return out;
}

// -- MessagePack (the subset serde types use) ----------------------------------

/** Encodes a value as MessagePack: null, booleans, numbers, strings, Uint8Array, arrays, plain objects. */
export function pack(value) {
  const w = new Writer();
  packInto(w, value);
  return w.done();
}

function packInto(w, v) {
  if (v === null || v === undefined) return w.u8(0xc0);
  if (v === false) return w.u8(0xc2);
  if (v === true) return w.u8(0xc3);
  if (typeof v === "number") {
    if (Number.isInteger(v) && v >= 0 && v <= 0xffffffff) {
      if (v < 0x80) return w.u8(v);
      if (v < 0x100) { w.u8(0xcc); return w.u8(v); }
      if (v < 0x10000) { w.u8(0xcd); return w.u16(v); }
      w.u8(0xce); return w.u32(v);
    }
    if (Number.isInteger(v) && v < 0 && v >= -0x80000000) {
      if (v >= -32) return w.u8(v & 0xff);
      if (v >= -128) { w.u8(0xd0); return w.u8(v); }
      if (v >= -32768) { w.u8(0xd1); return w.u16(v & 0xffff); }
      w.u8(0xd2); return w.u32(v >>> 0);
    }
    const view = new DataView(new ArrayBuffer(8));
    view.setFloat64(0, v);
    w.u8(0xcb); return w.raw(new Uint8Array(view.buffer));
  }
  if (typeof v === "string") {
    const b = utf8.encode(v);
    if (b.length < 32) w.u8(0xa0 | b.length);
    else if (b.length < 0x100) { w.u8(0xd9); w.u8(b.length); }
    else if (b.length < 0x10000) { w.u8(0xda); w.u16(b.length); }
    else { w.u8(0xdb); w.u32(b.length); }
    return w.raw(b);
  }
  if (v instanceof Uint8Array) {
    if (v.length < 0x100) { w.u8(0xc4); w.u8(v.length); }
    else if (v.length < 0x10000) { w.u8(0xc5); w.u16(v.length); }
    else { w.u8(0xc6); w.u32(v.length); }
    return w.raw(v);
  }
  if (Array.isArray(v)) {
    if (v.length < 16) w.u8(0x90 | v.length);
    else if (v.length < 0x10000) { w.u8(0xdc); w.u16(v.length); }
    else { w.u8(0xdd); w.u32(v.length); }
    for (const item of v) packInto(w, item);
    return;
  }
  if (typeof v === "object") {
    const entries = Object.entries(v);
    if (entries.length < 16) w.u8(0x80 | entries.length);
    else if (entries.length < 0x10000) { w.u8(0xde); w.u16(entries.length); }
    else { w.u8(0xdf); w.u32(entries.length); }
    for (const [k, item] of entries) { packInto(w, k); packInto(w, item); }
    return;
  }
  throw new TypeError(`cannot encode ${typeof v} as MessagePack`);
}

/** Decodes one MessagePack value. */
export function unpack(bytes) {
  const r = new Reader(bytes);
  const value = unpackFrom(r);
  if (r.left() !== 0) throw new Error("trailing bytes after a MessagePack value");
  return value;
}

function unpackFrom(r) {
  const m = r.u8();
  const view = (n) => { const b = r.take(n); return new DataView(b.buffer, b.byteOffset, n); };
  const array = (n) => { const out = []; for (let i = 0; i < n; i++) out.push(unpackFrom(r)); return out; };
  const map = (n) => { const out = {}; for (let i = 0; i < n; i++) { const k = unpackFrom(r); out[k] = unpackFrom(r); } return out; };
  if (m < 0x80) return m;
  if (m >= 0xe0) return m - 0x100;
  if ((m & 0xe0) === 0xa0) return fromUtf8.decode(r.take(m & 0x1f));
  if ((m & 0xf0) === 0x90) return array(m & 0x0f);
  if ((m & 0xf0) === 0x80) return map(m & 0x0f);
  switch (m) {
    case 0xc0: return null;
    case 0xc2: return false;
    case 0xc3: return true;
    case 0xc4: return r.take(view(1).getUint8(0)).slice();
    case 0xc5: return r.take(view(2).getUint16(0)).slice();
    case 0xc6: return r.take(view(4).getUint32(0)).slice();
    case 0xca: return view(4).getFloat32(0);
    case 0xcb: return view(8).getFloat64(0);
    case 0xcc: return view(1).getUint8(0);
    case 0xcd: return view(2).getUint16(0);
    case 0xce: return view(4).getUint32(0);
    case 0xcf: return Number(view(8).getBigUint64(0));
    case 0xd0: return view(1).getInt8(0);
    case 0xd1: return view(2).getInt16(0);
    case 0xd2: return view(4).getInt32(0);
    case 0xd3: return Number(view(8).getBigInt64(0));
    case 0xd9: return fromUtf8.decode(r.take(view(1).getUint8(0)));
    case 0xda: return fromUtf8.decode(r.take(view(2).getUint16(0)));
    case 0xdb: return fromUtf8.decode(r.take(view(4).getUint32(0)));
    case 0xdc: return array(view(2).getUint16(0));
    case 0xdd: return array(view(4).getUint32(0));
    case 0xde: return map(view(2).getUint16(0));
    case 0xdf: return map(view(4).getUint32(0));
    default: throw new Error(`unsupported MessagePack marker 0x${m.toString(16)}`);
  }
}

// -- the connection ------------------------------------------------------------

/**
 * Opens a Plexus connection over `ws://` or `wss://`. `data` (a Uint8Array or
 * string) travels in the Hello; `conn.peerData` is the listener's answer.
 * A refusal rejects with a PlexusError of kind "Refused" (`code`, `refusal`
 * such as "KeyRequired", `message`).
 *
 * `key` is the group's session key (hex text, as the Rust side reads it, or
 * a Uint8Array): both sides prove it over fresh nonces; a listener that
 * proves no key or another one rejects with kind "Untrusted", and nothing is
 * sent to it after the Hello (a keyed client never accepts a keyless peer).
 */
export async function connect(url, { data = new Uint8Array(), timeout = 10000, window = 2 << 20, maxFrame = 16 << 20, maxCalls = 64, key = null } = {}) {
  const raw = key === null || key === undefined ? null : parseKey(key);
  const hmac = raw ? await keyProof.hmacKey(raw) : null;
  const socket = new WebSocket(url, ["plexus"]);
  socket.binaryType = "arraybuffer";
  const conn = new Connection(socket, url, { window, maxFrame, maxCalls });
  await conn._handshake(typeof data === "string" ? utf8.encode(data) : data, timeout, hmac);
  return conn;
}

class Connection {
  constructor(socket, url, limits) {
    this.socket = socket;
    this.url = url;
    this.limits = limits;
    this.inbuf = new Uint8Array(0);
    this.calls = new Map();
    this.ops = new Map();
    this.nextId = 1;
    this.closed = null;
    this.peerDraining = false;
    this.onBytes = null;
    socket.addEventListener("message", (event) => {
      if (typeof event.data === "string") return this._fail("the peer sent a text message; Plexus travels in binary messages");
      const chunk = new Uint8Array(event.data);
      const joined = new Uint8Array(this.inbuf.length + chunk.length);
      joined.set(this.inbuf); joined.set(chunk, this.inbuf.length);
      this.inbuf = joined;
      if (this.onBytes) this.onBytes(); else this._readFrames();
    });
    socket.addEventListener("close", () => this._fail("the connection closed"));
    socket.addEventListener("error", () => this._fail("the WebSocket failed"));
  }

  async _handshake(data, timeout, hmac) {
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new PlexusError("Timeout", `no connection to ${this.url} within ${timeout} ms`)), timeout);
      this.socket.addEventListener("open", () => { clearTimeout(timer); resolve(); }, { once: true });
      this.socket.addEventListener("close", () => { clearTimeout(timer); reject(new PlexusError("Transport", `could not open ${this.url}`)); }, { once: true });
    });
    const node = crypto.getRandomValues(new Uint8Array(16));
    const proof = hmac ? { keyId: await keyProof.keyId(hmac), nonce: crypto.getRandomValues(new Uint8Array(NONCE_LEN)) } : null;
    const w = new Writer();
    w.raw(MAGIC); w.u16(VERSION); w.u16(0); w.raw(node);
    w.u32(this.limits.maxFrame); w.u32(this.limits.window); w.u32(this.limits.maxCalls);
    if (proof) {
      w.u16(4 + KEY_ID_LEN + NONCE_LEN); w.u32(data.length);
      w.u16(KEY_EXTENSION); w.u16(KEY_ID_LEN + NONCE_LEN); w.raw(proof.keyId); w.raw(proof.nonce);
    } else {
      w.u16(0); w.u32(data.length);
    }
    w.raw(data);
    this.socket.send(w.done());
    const answer = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new PlexusError("Timeout", `no handshake answer from ${this.url} within ${timeout} ms`)), timeout);
      this.onBytes = () => {
        try {
          const got = this._answer();
          if (got) { clearTimeout(timer); resolve(got); }
        } catch (error) { clearTimeout(timer); reject(error); }
      };
    });
    // Bytes after the answer stay in inbuf, unread, until the handshake is done.
    this.onBytes = () => {};
    if (answer.refused) {
      this.socket.close();
      const refusal = REFUSAL_NAMES[answer.code] || "Other";
      throw new PlexusError("Refused", `refused (${refusal}): ${answer.reason}`, { code: answer.code, refusal });
    }
    if (sameBytes(answer.peerNode, node)) {
      this.socket.close();
      throw new PlexusError("SelfConnect", "the peer is this client itself");
    }
    if (proof) {
      // The listener must prove the same key in this handshake (§3.6 step 3);
      // only then does this side prove it back, before any frame.
      const why = await this._untrusted(hmac, proof, node, answer);
      if (why) {
        this.socket.close();
        throw new PlexusError("Untrusted", `refused to trust ${this.url}: ${why}`);
      }
      this.socket.send(await keyProof.dialerProofMessage(hmac, node, answer.peerNode, proof.nonce, answer.keyExtension.subarray(KEY_ID_LEN, KEY_ID_LEN + NONCE_LEN)));
    }
    delete answer.keyExtension;
    Object.assign(this, answer);
    this.onBytes = null;
    this._readFrames();
  }

  /** Why the listener's Welcome does not prove this side's key, or "" when it does. */
  async _untrusted(hmac, proof, node, answer) {
    const theirs = answer.keyExtension;
    if (!theirs) return "it proved no session key, and this side has one (a keyed client never accepts a keyless peer; give both the same key)";
    if (theirs.length !== KEY_ID_LEN + NONCE_LEN + PROOF_LEN) return `its key proof is malformed (${theirs.length} bytes, not ${KEY_ID_LEN + NONCE_LEN + PROOF_LEN})`;
    if (!sameBytes(theirs.subarray(0, KEY_ID_LEN), proof.keyId)) return "it holds another session key than this side";
    const nonce = theirs.subarray(KEY_ID_LEN, KEY_ID_LEN + NONCE_LEN);
    const tag = theirs.subarray(KEY_ID_LEN + NONCE_LEN);
    if (!(await keyProof.verifyListener(hmac, tag, node, answer.peerNode, proof.nonce, nonce))) return "its proof of the session key is wrong for this handshake";
    return "";
  }

  /** Decodes the listener's answer once it is whole (§3.2). */
  _answer() {
    const b = this.inbuf;
    if (b.length < 7) return null;
    if (MAGIC.some((x, i) => b[i] !== x)) throw new PlexusError("Handshake", "the peer is not a Plexus endpoint");
    const version = (b[4] << 8) | b[5];
    if (b[6] === 1) {
      if (b.length < 11) return null;
      const len = (b[9] << 8) | b[10];
      if (b.length < 11 + len) return null;
      return { refused: true, code: (b[7] << 8) | b[8], reason: new TextDecoder().decode(b.subarray(11, 11 + len)) };
    }
    if (b[6] !== 0) throw new PlexusError("Handshake", `unknown handshake status ${b[6]}`);
    if (version !== VERSION) throw new PlexusError("VersionMismatch", `the peer speaks protocol v${version}, this client v${VERSION}`);
    if (b.length < 41) return null;
    const extLen = (b[35] << 8) | b[36];
    const dataLen = be32(b, 37);
    if (b.length < 41 + extLen + dataLen) return null;
    const answer = {
      refused: false,
      peerNode: b.slice(7, 23),
      peerMaxFrame: be32(b, 23),
      peerWindow: be32(b, 27),
      peerMaxCalls: be32(b, 31),
      peerData: b.slice(41 + extLen, 41 + extLen + dataLen),
      keyExtension: extensions(b.slice(41, 41 + extLen)).get(KEY_EXTENSION),
    };
    this.inbuf = b.slice(41 + extLen + dataLen);
    return answer;
  }

  _send(bytes) {
    if (this.closed) throw new PlexusError("Closing", `the connection is closed (${this.closed})`);
    this.socket.send(bytes);
  }

  _open(op, body, { timeout, oneway = false }) {
    if (this.closed || this.peerDraining) throw new PlexusError("Closing", "the connection is closing; the call was not sent", { op });
    const w = new Writer();
    let flags = FLAG.END;
    let index = this.ops.get(op);
    if (index === undefined) {
      index = this.ops.size;
      this.ops.set(op, index);
      flags |= FLAG.OP_NEW;
    }
    w.varint(index);
    if (flags & FLAG.OP_NEW) w.str(op);
    if (timeout !== undefined && timeout !== null) { flags |= FLAG.DEADLINE; w.varint(Math.round(timeout * 1000)); }
    w.raw(body);
    if (oneway) { flags |= FLAG.ONEWAY; this._send(frame(KIND.CALL_OPEN, flags, 0, w.done())); return null; }
    const id = this.nextId;
    this.nextId += 2;
    this._send(frame(KIND.CALL_OPEN, flags, id, w.done()));
    return id;
  }

  /** A unary call: resolves with the reply bytes, rejects with a PlexusError. `timeout` in ms. */
  call(op, body = new Uint8Array(), { timeout = 30000 } = {}) {
    return new Promise((resolve, reject) => {
      let id;
      try { id = this._open(op, body, { timeout }); } catch (error) { return reject(error); }
      const timer = setTimeout(() => {
        if (!this.calls.has(id)) return;
        this.calls.delete(id);
        this._send(frame(KIND.CANCEL, 0, id, new Uint8Array()));
        reject(new PlexusError("Timeout", `no answer within ${timeout} ms`, { op }));
      }, timeout);
      this.calls.set(id, {
        op,
        ack: (reply) => { clearTimeout(timer); resolve(reply); },
        fail: (error) => { clearTimeout(timer); reject(error); },
      });
    });
  }

  /** A one-way message: sent, never answered. */
  oneway(op, body = new Uint8Array()) {
    this._open(op, body, { oneway: true });
  }

  /** A server-stream call: an async iterator of reply messages, returning credit as they are consumed. */
  serverStream(op, body = new Uint8Array(), { timeout } = {}) {
    const id = this._open(op, body, { timeout });
    const queue = [];
    let wake = null;
    let end = null; // { error } once the call is over
    let consumed = 0;
    const half = Math.floor(this.limits.window / 2);
    this.calls.set(id, {
      op,
      data: (message) => { queue.push(message); if (wake) wake(); },
      ack: () => { end = { error: null }; if (wake) wake(); },
      fail: (error) => { end = { error }; if (wake) wake(); },
    });
    const conn = this;
    return {
      async *[Symbol.asyncIterator]() {
        try {
          for (;;) {
            if (queue.length) {
              const message = queue.shift();
              consumed += message.length;
              if (consumed > 0 && consumed >= half && !end) {
                const w = new Writer(); w.varint(consumed); consumed = 0;
                conn._send(frame(KIND.CREDIT, 0, id, w.done()));
              }
              yield message;
              continue;
            }
            if (end) { if (end.error) throw end.error; return; }
            await new Promise((resolve) => { wake = resolve; });
            wake = null;
          }
        } finally {
          if (!end && conn.calls.delete(id) && !conn.closed) conn._send(frame(KIND.CANCEL, 0, id, new Uint8Array()));
        }
      },
    };
  }

  /** Closes the connection: GoAway, then the WebSocket. */
  close() {
    if (this.closed) return;
    const w = new Writer(); w.u32(0); w.varint(0); w.raw(utf8.encode("closing"));
    this._send(frame(KIND.GOAWAY, 0, 0, w.done()));
    this.socket.close(1000);
    this._fail("closed by this side");
  }

  _fail(reason) {
    if (this.closed) return;
    // After the peer's GoAway with a code, calls in flight learn it (§8).
    const code = this.goaway ? this.goaway.code : 0;
    const kind = code === 10 ? "CutOff" : code === 11 ? "AccessRevoked" : "ConnectionLost";
    if (this.goaway) reason = `the peer went away (${this.goaway.name}): ${this.goaway.reason}`;
    this.closed = reason;
    for (const [, call] of this.calls) call.fail(new PlexusError(kind, reason, { op: call.op, code, system: code !== 0 }));
    this.calls.clear();
  }

  _violation(reason) {
    const w = new Writer(); w.u32(0); w.varint(7); w.raw(utf8.encode(reason));
    try { this.socket.send(frame(KIND.GOAWAY, 0, 0, w.done())); } catch { /* closing anyway */ }
    this.socket.close(1002);
    this._fail(`protocol error: ${reason}`);
  }

  _readFrames() {
    let b = this.inbuf;
    try {
      while (b.length >= HEADER) {
        const len = be32(b, 0);
        if (len > this.limits.maxFrame) return this._violation(`frame of ${len} bytes exceeds the limit of ${this.limits.maxFrame} bytes`);
        if (b.length < HEADER + len) break;
        this._onFrame(b[4], b[5], be32(b, 6), b.slice(HEADER, HEADER + len));
        b = b.subarray(HEADER + len);
      }
    } catch (error) {
      return this._violation(String(error.message || error));
    }
    this.inbuf = b.slice();
  }

  _onFrame(kind, flags, id, payload) {
    const call = this.calls.get(id);
    switch (kind) {
      case KIND.DATA:
        if (call && call.data) call.data(payload);
        else if (call) throw new Error(`Data on call ${id}, which takes no reply stream`);
        return;
      case KIND.ACK:
      case KIND.REJECT: {
        if (id % 2 === 0) throw new Error(`an answer for call ${id}, which this side did not open`);
        if (!call) return;
        this.calls.delete(id);
        if (kind === KIND.ACK) return call.ack(payload);
        const r = new Reader(payload);
        const code = r.varint();
        const message = r.str();
        const system = (flags & 0x01) !== 0;
        return call.fail(new PlexusError(system ? SYSTEM_NAMES[code] || "HandlerFailed" : "Rejected", message, { op: call.op, code, details: r.rest(), system }));
      }
      case KIND.CANCEL:
        if (call) { this.calls.delete(id); call.fail(new PlexusError("Cancelled", "cancelled by the peer", { op: call.op })); }
        return;
      case KIND.PING:
        if (payload.length !== 8) throw new Error("a ping payload must be exactly 8 bytes");
        return this._send(frame(KIND.PONG, 0, 0, payload));
      case KIND.GOAWAY: {
        this.peerDraining = true;
        const r = new Reader(payload);
        r.take(4); // last id: this client has no retry logic to feed
        const code = r.varint();
        if (code !== 0) this.goaway = { code, name: SYSTEM_NAMES[code] || `system code ${code}`, reason: fromUtf8.decode(r.rest()) };
        return;
      }
      case KIND.CALL_OPEN: {
        // This client serves nothing: refuse calls, drop one-way messages.
        if ((flags & FLAG.ONEWAY) === 0) {
          const w = new Writer(); w.varint(1); w.str("this browser client serves no operations");
          this._send(frame(KIND.REJECT, 0x01, id, w.done()));
        }
        return;
      }
      case KIND.END:
      case KIND.CREDIT:
      case KIND.PONG:
        return;
      default:
        throw new Error(`unknown frame kind ${kind}`);
    }
  }
}

/** A `#[plexus::service]` contract's methods, with MessagePack arguments. */
export class MsgPackService {
  constructor(conn, service) { this.conn = conn; this.service = service; }
  static args(args) { return pack(args.length === 0 ? null : args.length === 1 ? args[0] : args); }
  async unary(method, ...args) { return unpack(await this.conn.call(`${this.service}/${method}`, MsgPackService.args(args))); }
  oneway(method, ...args) { this.conn.oneway(`${this.service}/${method}`, MsgPackService.args(args)); }
  async *serverStream(method, ...args) {
    for await (const message of this.conn.serverStream(`${this.service}/${method}`, MsgPackService.args(args))) yield unpack(message);
  }
}
