// peerpouch in the browser: a small client (and server) of the peerpouch RPC over a standard
// RTCPeerConnection, signalling through a CouchDB-compatible hub over HTTP.
//
// It speaks exactly what docs/protocol.md specifies:
//   §1 hub documents: share docs, signal docs {sender, recipient, data, info, created_at, n},
//      `data` as the browser gives it ({type, sdp} or {candidate: {...}}); each receiver deletes
//      the signals it consumed; numbered signals are applied in order.
//   §2 the peer link: channels `peerpouch` and `peerpouch-ctl` (protocol `peerpouch/1`), pings,
//      `bye`, frames (kind, flags, id, payload), hello with the HMAC-SHA256 access proof bound to
//      both DTLS fingerprints (WebCrypto), calls, live changes subscriptions, attachments as
//      binary messages; at most 64 KiB queued in the channel and messages of at most 64 KiB.
//
// No dependencies; an ES module. Errors are typed: HubError, RpcError (CouchDB-shaped: status,
// error, reason), ProtocolError (the peer broke the protocol; the link closes).

export const SHARE_TYPE = 'com.stemstorage.peerpouch.share';
export const SIGNAL_TYPE = 'com.stemstorage.peerpouch.signal';
export const DATA_LABEL = 'peerpouch';
export const CTL_LABEL = 'peerpouch-ctl';
export const CHANNEL_PROTOCOL = 'peerpouch/1';
export const PROTOCOL_VERSION = 1;
export const CAPABILITIES = ['binary-attachments', 'live-changes'];

const KIND = { hello: 1, request: 2, response: 3, item: 4, end: 5, cancel: 6, binary: 7, goodbye: 8 };
const KIND_NAME = Object.fromEntries(Object.entries(KIND).map(([k, v]) => [v, k]));
const HEADER = 6;
const MORE = 1;
const MIN_FRAME = 1024;
const MAX_FRAME = 64 * 1024;
// What the sender keeps queued in the data channel at most (DESIGN.md: bigger bursts overflow
// Chromium's UDP receive buffer and stall SCTP for seconds).
const SEND_BUFFER = 64 * 1024;

/** A hub request failed (CouchDB's status, error and reason). */
export class HubError extends Error {
  constructor(status, error, reason) {
    super(`hub: ${status} ${error}: ${reason}`);
    this.name = 'HubError';
    Object.assign(this, { status, error, reason });
  }
}

/** A call failed (CouchDB-shaped, as the peer or the link reported it). */
export class RpcError extends Error {
  constructor(status, error, reason) {
    super(`${status} ${error}: ${reason}`);
    this.name = 'RpcError';
    Object.assign(this, { status, error, reason });
  }
  static from(e) {
    return new RpcError(e?.status ?? 500, String(e?.error ?? 'unknown'), String(e?.reason ?? ''));
  }
}

/** The peer broke the protocol: the link closes with a goodbye. */
export class ProtocolError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ProtocolError';
  }
}

export function randomHex(bytes = 16) {
  const b = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

export function toHex(bytes) {
  return Array.from(new Uint8Array(bytes), (x) => x.toString(16).padStart(2, '0')).join('');
}

export async function sha256Hex(bytes) {
  return toHex(await crypto.subtle.digest('SHA-256', bytes));
}

// ---------------------------------------------------------------------------------------------
// The hub: a CouchDB database over HTTP.

export class Hub {
  /** `url`: the hub database, e.g. `http://127.0.0.1:5984/hub`. */
  constructor(url) {
    this.url = url.replace(/\/+$/, '');
  }

  async request(method, path, body) {
    const init = { method, headers: { accept: 'application/json' } };
    if (body !== undefined) {
      init.headers['content-type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let r, text;
    try {
      r = await fetch(this.url + path, init);
      text = await r.text();
    } catch (e) {
      throw new HubError(0, 'unreachable', `${method} ${path}: ${e}`);
    }
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      throw new HubError(r.status, 'bad_response', text.slice(0, 200));
    }
    if (!r.ok) throw new HubError(r.status, json.error ?? 'unknown', json.reason ?? '');
    return json;
  }

  async updateSeq() {
    return (await this.request('GET', '')).update_seq;
  }

  async put(doc) {
    const r = await this.request('PUT', '/' + encodeURIComponent(doc._id), doc);
    return r.rev;
  }

  async remove(id, rev) {
    return this.request('DELETE', `/${encodeURIComponent(id)}?rev=${encodeURIComponent(rev)}`);
  }

  /**
   * Follows the changes feed (include_docs, style=all_docs) from `since`, calling `onDoc(doc)`
   * for each row's document, until `stop()`. Returns `{stop()}`.
   *
   * It uses `feed=longpoll` in a loop, not `feed=continuous`: a browser always sends
   * `Accept-Encoding: gzip` (a forbidden header, scripts cannot change it), and pouchdb-server's
   * gzipped continuous feed delivers nothing until its compressor flushes (.ci/hub/NOTES.md),
   * while a gzipped longpoll answer arrives whole as soon as there is a change.
   */
  follow(since, onDoc, onError = () => {}) {
    const ctl = new AbortController();
    let seq = since;
    let stopped = false;
    const run = async () => {
      while (!stopped) {
        try {
          const s = encodeURIComponent(typeof seq === 'string' ? seq : JSON.stringify(seq));
          const q = `/_changes?feed=longpoll&include_docs=true&style=all_docs&heartbeat=10000&since=${s}`;
          const r = await fetch(this.url + q, { signal: ctl.signal, headers: { accept: 'application/json' } });
          const text = await r.text();
          if (!r.ok) throw new HubError(r.status, 'changes', text.slice(0, 200));
          const body = JSON.parse(text);
          for (const row of body.results ?? []) {
            if (row.doc && !row.doc._deleted) onDoc(row.doc);
          }
          if (body.last_seq !== undefined) seq = body.last_seq;
        } catch (e) {
          if (stopped) return;
          onError(e);
          await new Promise((r) => setTimeout(r, 500));
        }
      }
    };
    run();
    return {
      stop() {
        stopped = true;
        ctl.abort();
      },
    };
  }
}

// ---------------------------------------------------------------------------------------------
// Signals: numbered, in order, deleted once consumed.

class SignalOut {
  constructor(hub, sender, recipient, prefix, info) {
    Object.assign(this, { hub, sender, recipient, prefix, info, n: 0, chain: Promise.resolve() });
  }
  /** Writes one signal; signals go out one after another (numbered `n`). */
  send(data) {
    const doc = {
      _id: `${this.prefix}${randomHex()}`,
      type: SIGNAL_TYPE,
      sender: this.sender,
      recipient: this.recipient,
      data,
      info: this.info,
      created_at: Date.now(),
      n: this.n++,
    };
    // One failed write does not stop the ones after it; its caller sees the error.
    const written = this.chain.then(() => this.hub.put(doc));
    this.chain = written.catch(() => {});
    return written;
  }
}

/** Puts numbered signals back in order (the hub may show concurrent writes in another order). */
export class SignalIn {
  constructor(hub, apply) {
    Object.assign(this, { hub, apply, next: 0, held: new Map(), seen: new Set() });
  }
  take(doc) {
    if (this.seen.has(doc._id)) return;
    this.seen.add(doc._id);
    // The receiver deletes what it consumed.
    this.hub.remove(doc._id, doc._rev).catch(() => {});
    if (typeof doc.n !== 'number') return this.apply(doc.data);
    this.held.set(doc.n, doc.data);
    while (this.held.has(this.next)) {
      const d = this.held.get(this.next);
      this.held.delete(this.next);
      this.next++;
      this.apply(d);
    }
  }
}

function fingerprintOf(sdp) {
  const m = /^a=fingerprint:(\S+) (\S+)\s*$/m.exec(sdp ?? '');
  if (!m) throw new ProtocolError('no a=fingerprint in the SDP');
  // As str0m writes it: lower-case hash name, upper-case hex.
  return `${m[1].toLowerCase()} ${m[2].toUpperCase()}`;
}

/**
 * The access proof (docs/protocol.md §2.3): hex(HMAC-SHA256(key, "peerpouch-proof-v1" 0 role 0
 * share 0 peer 0 sender_fp 0 receiver_fp 0)).
 */
export async function makeProof(key, role, share, peer, senderFp, receiverFp) {
  const enc = new TextEncoder();
  const parts = ['peerpouch-proof-v1', role, share, peer, senderFp, receiverFp];
  const msg = [];
  for (const p of parts) msg.push(...enc.encode(p), 0);
  const k = await crypto.subtle.importKey('raw', key, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  return toHex(await crypto.subtle.sign('HMAC', k, new Uint8Array(msg)));
}

// ---------------------------------------------------------------------------------------------
// Frames.

function frame(kind, flags, id, payload) {
  const f = new Uint8Array(HEADER + payload.length);
  f[0] = kind;
  f[1] = flags;
  new DataView(f.buffer).setUint32(2, id);
  f.set(payload, HEADER);
  return f;
}

export function splitFrames(kind, id, payload, frameSize) {
  const chunk = Math.max(frameSize, MIN_FRAME) - HEADER;
  if (payload.length === 0) return [frame(kind, 0, id, payload)];
  const out = [];
  for (let at = 0; at < payload.length; at += chunk) {
    const part = payload.subarray(at, Math.min(at + chunk, payload.length));
    out.push(frame(kind, at + chunk < payload.length ? MORE : 0, id, part));
  }
  return out;
}

/** Reassembles messages; frames of different ids may interleave. */
export class Assembler {
  constructor(maxMessage, maxFrame) {
    Object.assign(this, { maxMessage, maxFrame, partial: new Map(), held: 0 });
  }
  expect(kind, id, len) {
    if (len <= this.maxMessage && !this.partial.has(id)) {
      this.partial.set(id, { kind, id, buf: new Uint8Array(len), len: 0 });
    }
  }
  push(bytes) {
    if (bytes.length > this.maxFrame) throw new ProtocolError(`frame of ${bytes.length} bytes over ${this.maxFrame}`);
    if (bytes.length < HEADER) throw new ProtocolError(`frame of ${bytes.length} bytes is shorter than its header`);
    const kind = bytes[0];
    const flags = bytes[1];
    if (!KIND_NAME[kind]) throw new ProtocolError(`unknown frame kind ${kind}`);
    if (flags & ~MORE) throw new ProtocolError(`unknown frame flags ${flags}`);
    const id = new DataView(bytes.buffer, bytes.byteOffset).getUint32(2);
    const payload = bytes.subarray(HEADER);
    let m = this.partial.get(id);
    if (m && m.kind !== kind) throw new ProtocolError(`frame of kind ${kind} inside a message of kind ${m.kind}`);
    if (m) {
      this.partial.delete(id);
      this.held -= m.len;
    } else {
      m = { kind, id, buf: new Uint8Array(0), len: 0 };
    }
    if (this.held + m.len + payload.length > this.maxMessage) throw new ProtocolError('message over the limit');
    if (m.len + payload.length > m.buf.length) {
      const bigger = new Uint8Array(Math.max(m.len + payload.length, m.buf.length * 2));
      bigger.set(m.buf.subarray(0, m.len));
      m.buf = bigger;
    }
    m.buf.set(payload, m.len);
    m.len += payload.length;
    if (flags & MORE) {
      this.held += m.len;
      this.partial.set(id, m);
      return null;
    }
    return { kind, id, payload: m.buf.subarray(0, m.len) };
  }
}

const enc = new TextEncoder();
const dec = new TextDecoder();
const json = (bytes) => JSON.parse(dec.decode(bytes));

// ---------------------------------------------------------------------------------------------
// The link: an RTCPeerConnection with the two channels, liveness, flow control and the RPC.

class Link {
  constructor(opts) {
    this.opts = {
      idleTimeout: 10000,
      heartbeat: 1000,
      connectTimeout: 30000,
      helloTimeout: 10000,
      frame: 32 * 1024,
      maxMessage: 256 * 1024 * 1024,
      log: () => {},
      // RTCConfiguration's own fields, passed through as the browser takes them:
      // [{urls, username, credential}], and 'all' | 'relay'.
      iceServers: [],
      iceTransportPolicy: 'all',
      ...opts,
    };
    this.pc = new RTCPeerConnection({ iceServers: this.opts.iceServers, iceTransportPolicy: this.opts.iceTransportPolicy });
    this.pc.onconnectionstatechange = () => this.opts.log('connection', this.pc.connectionState);
    this.pc.onicecandidateerror = (e) => this.opts.log('ICE candidate error', e.url, e.errorCode, e.errorText);
    this.data = null;
    this.ctl = null;
    this.out = []; // [id, [frames]] round-robin, id 0 first
    this.outBytes = 0;
    this.asm = new Assembler(this.opts.maxMessage, MAX_FRAME);
    this.frame = this.opts.frame;
    this.lastRecv = 0;
    this.lastSent = 0;
    this.maxReceived = 0; // largest data channel message seen (the sender's limit is 64 KiB)
    this.closed = false;
    this.onclose = () => {};
    this.closedPromise = new Promise((r) => (this._closed = r));
    this.openedPromise = new Promise((res, rej) => ((this._opened = res), (this._openFailed = rej)));
    this.openedPromise.catch(() => {}); // awaited only by clients
    // Give up if the channels have not opened in time, or the other side's hello is late.
    this.connectTimer = setTimeout(() => this.opened || this.shut('connect timeout'), this.opts.connectTimeout);
  }

  /**
   * Adds a remote candidate; holds it until the remote description is set (peerpouch's sharer
   * trickles its host candidate before its answer). `null` or an empty one ends the candidates.
   */
  async addCandidate(c) {
    if (!c || !c.candidate) return;
    if (!this.pc.remoteDescription) {
      (this.held ??= []).push(c);
      return;
    }
    try {
      await this.pc.addIceCandidate(c);
    } catch (e) {
      // Candidates that do not parse are skipped: the link still forms (peer-reflexive).
      this.opts.log('candidate skipped', String(e));
    }
  }

  async addHeldCandidates() {
    for (const c of this.held?.splice(0) ?? []) await this.addCandidate(c);
  }

  /**
   * The path ICE selected, from `getStats()`: the transport's selected candidate pair (or the
   * nominated succeeded one), each side as {type, address, port, protocol, relayProtocol}.
   * `null` before a pair is selected.
   */
  async selectedPath() {
    const stats = await this.pc.getStats();
    const byId = new Map();
    stats.forEach((r) => byId.set(r.id, r));
    let pair = null;
    stats.forEach((r) => {
      if (r.type === 'transport' && r.selectedCandidatePairId) pair = byId.get(r.selectedCandidatePairId) ?? pair;
    });
    if (!pair) {
      stats.forEach((r) => {
        if (r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded') pair = r;
      });
    }
    if (!pair) return null;
    const side = (c) =>
      c && { type: c.candidateType, address: c.address ?? c.ip ?? null, port: c.port, protocol: c.protocol, relayProtocol: c.relayProtocol ?? null };
    return {
      local: side(byId.get(pair.localCandidateId)),
      remote: side(byId.get(pair.remoteCandidateId)),
      state: pair.state,
      nominated: pair.nominated,
      bytesSent: pair.bytesSent,
      bytesReceived: pair.bytesReceived,
    };
  }

  localFingerprint() {
    return fingerprintOf(this.pc.localDescription?.sdp);
  }
  remoteFingerprint() {
    return fingerprintOf(this.pc.remoteDescription?.sdp);
  }

  attach(ch) {
    ch.binaryType = 'arraybuffer';
    if (ch.label === DATA_LABEL) {
      this.data = ch;
      ch.bufferedAmountLowThreshold = SEND_BUFFER / 2;
      ch.onbufferedamountlow = () => this.pump();
      ch.onmessage = (e) => {
        this.lastRecv = performance.now();
        if (typeof e.data === 'string') return this.fail(new ProtocolError('text on the data channel'));
        this.maxReceived = Math.max(this.maxReceived, e.data.byteLength);
        try {
          const m = this.asm.push(new Uint8Array(e.data));
          if (m) this.onMessage(m);
        } catch (err) {
          this.fail(err);
        }
      };
    } else if (ch.label === CTL_LABEL) {
      this.ctl = ch;
      ch.onmessage = (e) => {
        this.lastRecv = performance.now();
        if (e.data === 'bye') this.shut('remote');
      };
    } else {
      return;
    }
    ch.onclose = () => this.shut('channel closed');
    ch.onopen = () => this.maybeOpen();
    this.maybeOpen();
  }

  maybeOpen() {
    if (this.opened || this.data?.readyState !== 'open' || this.ctl?.readyState !== 'open') return;
    this.opened = true;
    clearTimeout(this.connectTimer);
    this.helloTimer = setTimeout(() => this.isReady || this.fail(new ProtocolError('no hello within the hello timeout')), this.opts.helloTimeout);
    this.lastRecv = this.lastSent = performance.now();
    this.timer = setInterval(() => this.tick(), Math.min(250, this.opts.heartbeat));
    this._opened();
    this.onOpen();
  }

  tick() {
    const now = performance.now();
    if (now - this.lastRecv > this.opts.idleTimeout) return this.shut('idle timeout');
    if (now - this.lastSent >= this.opts.heartbeat && this.ctl?.readyState === 'open') {
      this.ctl.send('ping');
      this.lastSent = now;
    }
  }

  queue(kind, id, payload) {
    const frames = splitFrames(kind, id, payload, this.frame);
    for (const f of frames) this.outBytes += f.length;
    const s = this.out.find((x) => x[0] === id);
    if (s) s[1].push(...frames);
    else if (id === 0) this.out.unshift([id, frames]);
    else this.out.push([id, frames]);
    this.pump();
  }

  queueJson(kind, id, value) {
    this.queue(kind, id, enc.encode(JSON.stringify(value)));
  }

  /** Frames out while the channel holds at most SEND_BUFFER bytes. */
  pump() {
    const ch = this.data;
    if (!ch || ch.readyState !== 'open') return;
    while (this.out.length) {
      const [id, frames] = this.out[0];
      const f = frames[0];
      if (ch.bufferedAmount > SEND_BUFFER / 2 && ch.bufferedAmount + f.length > SEND_BUFFER) return;
      ch.send(f);
      this.lastSent = performance.now();
      this.outBytes -= f.length;
      frames.shift();
      this.out.shift();
      if (frames.length) {
        if (id === 0) this.out.unshift([id, frames]);
        else this.out.push([id, frames]);
      }
    }
  }

  fail(err) {
    if (this.closed) return;
    this.opts.log('link error', String(err));
    const status = err instanceof ProtocolError ? 400 : 500;
    try {
      this.out = [];
      this.queueJson(KIND.goodbye, 0, { status, error: 'bad_request', reason: String(err.message ?? err) });
    } catch {}
    this.close(String(err.message ?? err));
  }

  /** Closes the link: `bye` on the control channel, then the connection. */
  close(reason = 'closed by the app') {
    if (this.closed) return;
    try {
      if (this.ctl?.readyState === 'open') this.ctl.send('bye');
    } catch {}
    this.shut(reason);
  }

  shut(reason) {
    if (this.closed) return;
    this.closed = true;
    this.closeReason = reason;
    clearInterval(this.timer);
    clearTimeout(this.connectTimer);
    clearTimeout(this.helloTimer);
    this._openFailed(this.goodbye ?? new RpcError(503, 'unavailable', `link closed before it opened: ${reason}`));
    // Let a queued bye and goodbye leave before the connection goes.
    setTimeout(() => this.pc.close(), 100);
    this.onLinkClosed(reason);
    this.onclose(reason);
    this._closed(reason);
  }
}

// ---------------------------------------------------------------------------------------------
// The client: open a share, then call.

export class Client extends Link {
  /**
   * Opens `share` through the hub: offer and candidates out as p-signal docs, answer and
   * candidates in as s-signal docs. Resolves once the server's hello checked out.
   * opts: {info, key (Uint8Array, optional), frame, idleTimeout, log, iceServers (the
   * browser's RTCIceServer list, default []), iceTransportPolicy ('all' or 'relay')}.
   */
  static async open(hub, share, opts = {}) {
    const c = new Client(opts);
    await c.connect(hub, share);
    return c;
  }

  constructor(opts) {
    super(opts);
    this.calls = new Map();
    this.nextId = 1;
    this.ready = new Promise((res, rej) => ((this._ready = res), (this._readyFailed = rej)));
    this.ready.catch(() => {});
    this.maxInFlight = 1;
    this.waiting = [];
    this.timings = {};
  }

  async connect(hub, share) {
    const t0 = performance.now();
    this.share = share;
    this.peer = `peer-${randomHex()}`;
    const out = new SignalOut(hub, this.peer, share, 'p-signal-', this.opts.info ?? null);
    const seen = new SignalIn(hub, (d) => this.onSignal(d));
    const since = await hub.updateSeq();
    this.feed = hub.follow(since, (doc) => {
      if (doc.type === SIGNAL_TYPE && doc.recipient === this.peer && doc.sender === share) seen.take(doc);
    });
    this.gathered = {}; // local candidates by type (host, srflx, relay, ...)
    this.pc.onicecandidate = (e) => {
      if (e.candidate?.candidate) this.gathered[e.candidate.type ?? 'unknown'] = (this.gathered[e.candidate.type ?? 'unknown'] ?? 0) + 1;
      out.send({ candidate: e.candidate ? e.candidate.toJSON() : null }).catch((err) => this.opts.log('candidate not sent', String(err)));
    };
    this.attach(this.pc.createDataChannel(DATA_LABEL, { ordered: true, protocol: CHANNEL_PROTOCOL }));
    this.attach(this.pc.createDataChannel(CTL_LABEL, { ordered: true, protocol: CHANNEL_PROTOCOL }));
    await this.pc.setLocalDescription(await this.pc.createOffer());
    await out.send(this.pc.localDescription.toJSON());
    // The feed runs until the link closes: signals that come late are consumed (and deleted) too.
    await this.openedPromise;
    this.timings.channel_open_ms = performance.now() - t0;
    await this.ready;
    this.timings.ready_ms = performance.now() - t0;
  }

  async onSignal(d) {
    try {
      if (d?.type === 'answer') {
        await this.pc.setRemoteDescription(d);
        await this.addHeldCandidates();
      } else if (d?.type === 'refuse') {
        this.goodbye = new RpcError(403, 'forbidden', `the sharer refused the connection: ${d.reason ?? 'no reason given'}`);
        this.shut(`refused: ${d.reason ?? 'no reason'}`);
      }
      else if (d && 'candidate' in d) await this.addCandidate(d.candidate);
      else this.opts.log('signal ignored', JSON.stringify(d).slice(0, 200));
    } catch (e) {
      this.opts.log('signal not applied', String(e));
    }
  }

  async onOpen() {
    const h = {
      v: PROTOCOL_VERSION,
      role: 'client',
      share: this.share,
      peer: this.peer,
      caps: CAPABILITIES,
      frame: this.opts.frame,
      max_message: this.opts.maxMessage,
      max_in_flight: 0,
      read_only: false,
    };
    if (this.opts.key) {
      h.proof = await makeProof(this.opts.key, 'client', this.share, this.peer, this.localFingerprint(), this.remoteFingerprint());
    }
    this.queueJson(KIND.hello, 0, h);
  }

  async onHello(h) {
    if (h.v !== PROTOCOL_VERSION) throw new ProtocolError(`incompatible protocol version ${h.v}`);
    if (h.role !== 'server' || h.share !== this.share) throw new ProtocolError('the hello is not from the server of this share');
    if (this.opts.key) {
      const want = await makeProof(this.opts.key, 'server', this.share, this.peer, this.remoteFingerprint(), this.localFingerprint());
      if (h.proof !== want) throw new ProtocolError('the server could not prove it holds the share key');
    }
    this.frame = Math.min(Math.max(h.frame, MIN_FRAME), MAX_FRAME, this.opts.frame);
    this.maxInFlight = Math.max(1, h.max_in_flight);
    this.server = h;
    this.isReady = true;
    this._ready(h);
    this.flush();
  }

  onMessage(m) {
    switch (m.kind) {
      case KIND.hello:
        if (this.isReady) throw new ProtocolError('a second hello');
        this.onHello(json(m.payload)).catch((e) => this.fail(e));
        return;
      case KIND.goodbye: {
        const e = RpcError.from(json(m.payload));
        this.opts.log('goodbye from the server', String(e));
        this.goodbye = e;
        this.shut(`goodbye: ${e.message}`);
        return;
      }
    }
    if (!this.isReady) throw new ProtocolError(`${KIND_NAME[m.kind]} before hello`);
    const c = this.calls.get(m.id);
    switch (m.kind) {
      case KIND.response: {
        if (!c) return;
        if (c.subscription) throw new ProtocolError(`a response to subscription ${m.id}`);
        const r = json(m.payload);
        if (r.attachment) {
          c.attachment = r.attachment;
          c.firstByte = performance.now();
          this.asm.expect(KIND.binary, m.id, r.attachment.length);
          return;
        }
        this.finish(m.id);
        if ('ok' in r) c.resolve(r.ok);
        else c.reject(RpcError.from(r.err));
        return;
      }
      case KIND.binary: {
        if (!c) return;
        if (!c.attachment) throw new ProtocolError(`binary data for call ${m.id} without metadata`);
        if (m.payload.length !== c.attachment.length) throw new ProtocolError('attachment length differs from its announcement');
        this.finish(m.id);
        c.resolve({ ...c.attachment, data: m.payload, first_byte_at: c.firstByte });
        return;
      }
      case KIND.item:
        if (c?.subscription) c.onBatch(json(m.payload));
        return;
      case KIND.end: {
        if (!c) return;
        this.finish(m.id);
        const e = json(m.payload).error;
        if (e) c.reject(RpcError.from(e));
        else c.resolve(null);
        return;
      }
      default:
        throw new ProtocolError(`a server does not send ${KIND_NAME[m.kind]}`);
    }
  }

  finish(id) {
    this.calls.delete(id);
    this.flush();
  }

  /** Sends queued calls while fewer than the server's max_in_flight are open. */
  flush() {
    while (this.isReady && !this.closed && this.waiting.length && this.openCount() < this.maxInFlight) {
      const { id, body } = this.waiting.shift();
      this.calls.get(id).sent = true;
      this.queueJson(KIND.request, id, body);
    }
  }

  openCount() {
    let n = 0;
    for (const c of this.calls.values()) if (c.sent) n++;
    return n;
  }

  start(body, extra) {
    if (this.closed) return Promise.reject(new RpcError(503, 'unavailable', 'the link to the peer is closed'));
    const id = this.nextId++;
    const p = new Promise((resolve, reject) => this.calls.set(id, { resolve, reject, ...extra }));
    this.waiting.push({ id, body });
    this.flush();
    return { id, done: p };
  }

  /** One database operation, e.g. `{op: 'get', id: 'doc'}`; resolves with the response. */
  call(request) {
    return this.start({ call: request }).done;
  }

  /** A live changes subscription: `onBatch(changes)` per batch; returns `{id, done, cancel()}`. */
  subscribe(request, onBatch) {
    const s = this.start({ subscribe: request }, { subscription: true, onBatch });
    s.cancel = () => {
      const c = this.calls.get(s.id);
      if (!c) return;
      this.calls.delete(s.id);
      if (c.sent) this.queue(KIND.cancel, s.id, new Uint8Array(0));
      else this.waiting = this.waiting.filter((w) => w.id !== s.id);
      c.resolve(null);
      this.flush();
    };
    return s;
  }

  onLinkClosed(reason) {
    this.feed?.stop();
    this._readyFailed(this.goodbye ?? new RpcError(503, 'unavailable', `the link closed: ${reason}`));
    for (const c of this.calls.values()) c.reject(new RpcError(503, 'unavailable', `the link to the peer closed: ${reason}`));
    this.calls.clear();
    this.waiting = [];
  }
}

// ---------------------------------------------------------------------------------------------
// The server: serve a database to the peers that open a share.

/**
 * What a server link serves: `execute(request)` resolves with a response (`{result: ...}`) or
 * rejects with an RpcError; `subscribe(request, onBatch, onEnd)` (optional) starts live changes
 * and returns a function that stops them.
 * @typedef {{execute(req: object): Promise<object>, subscribe?: Function, name?: string, uuid?: string}} Served
 */

/** Whether a request writes only `_local` documents (allowed on read-only shares: checkpoints). */
export function onlyLocal(req) {
  if (req.op === 'put_local' || req.op === 'delete_local') return true;
  if (req.op === 'bulk_docs') return (req.docs ?? []).every((d) => typeof d?._id === 'string' && d._id.startsWith('_local/'));
  return false;
}
const WRITES = new Set(['bulk_docs', 'put_local', 'delete_local']);
/** Bytes queued for a peer past which its live subscriptions end. */
export const SUBSCRIPTION_QUEUE_LIMIT = 8 * 1024 * 1024;

export class ServerLink extends Link {
  constructor(share, db, opts) {
    super(opts);
    Object.assign(this, { share, db, isReady: false, served: 0, open: new Set(), subs: new Map() });
  }

  onOpen() {}

  async onHello(h) {
    if (h.v !== PROTOCOL_VERSION) {
      this.out = [];
      this.queueJson(KIND.goodbye, 0, { status: 426, error: 'incompatible_version', reason: `we speak ${PROTOCOL_VERSION}, the peer ${h.v}` });
      return this.close('incompatible version');
    }
    if (h.role !== 'client' || h.share !== this.share) throw new ProtocolError('the hello is not from a client of this share');
    let proof;
    if (this.opts.key) {
      const want = await makeProof(this.opts.key, 'client', this.share, h.peer, this.remoteFingerprint(), this.localFingerprint());
      if (h.proof !== want) {
        this.out = [];
        this.queueJson(KIND.goodbye, 0, { status: 403, error: 'forbidden', reason: 'this share needs its access key; the proof is missing or wrong' });
        return this.close('access denied');
      }
      proof = await makeProof(this.opts.key, 'server', this.share, h.peer, this.localFingerprint(), this.remoteFingerprint());
    }
    this.frame = Math.min(Math.max(h.frame, MIN_FRAME), MAX_FRAME, this.opts.frame);
    this.peerMaxMessage = h.max_message;
    const uuid = typeof this.db.uuid === 'string' && /^[\x21-\x7e]{1,128}$/.test(this.db.uuid) ? this.db.uuid : undefined;
    this.queueJson(KIND.hello, 0, {
      v: PROTOCOL_VERSION,
      role: 'server',
      share: this.share,
      peer: h.peer,
      caps: CAPABILITIES,
      frame: this.opts.frame,
      max_message: this.opts.maxMessage,
      max_in_flight: 16,
      read_only: this.readOnly(),
      ...(uuid ? { db_uuid: uuid } : {}),
      ...(proof ? { proof } : {}),
    });
    this.isReady = true;
    this.opts.log('client ready', h.peer);
  }

  readOnly() {
    return this.opts.readOnly ?? true;
  }

  onMessage(m) {
    if (m.kind === KIND.hello) {
      if (this.helloSeen) throw new ProtocolError('a second hello');
      this.helloSeen = true;
      this.onHello(json(m.payload)).catch((e) => this.fail(e));
      return;
    }
    if (m.kind === KIND.goodbye) return this.shut('goodbye from the client');
    if (!this.isReady) throw new ProtocolError(`${KIND_NAME[m.kind]} before hello`);
    if (m.kind === KIND.cancel) {
      this.subs.get(m.id)?.();
      this.subs.delete(m.id);
      return void this.open.delete(m.id);
    }
    if (m.kind !== KIND.request) throw new ProtocolError(`a client does not send ${KIND_NAME[m.kind]}`);
    if (this.open.has(m.id)) throw new ProtocolError(`call ${m.id} is already open`);
    if (this.open.size >= 16) throw new ProtocolError('more than 16 calls open at once');
    const body = json(m.payload);
    this.open.add(m.id);
    if (body.subscribe) return this.startSubscription(m.id, body.subscribe);
    const req = body.call;
    let reply;
    if (!req || typeof req !== 'object') reply = Promise.reject(new RpcError(400, 'bad_request', 'a request needs a call'));
    else if (req.op === 'destroy') reply = Promise.reject(new RpcError(403, 'forbidden', 'peers may not destroy a shared database'));
    else if (this.readOnly() && WRITES.has(req.op) && !onlyLocal(req)) {
      reply = Promise.reject(new RpcError(403, 'forbidden', 'this share is read-only; only _local documents can be written'));
    } else {
      try {
        reply = Promise.resolve(this.db.execute(req));
      } catch (e) {
        reply = Promise.reject(e);
      }
    }
    reply.then(
      (r) => this.answer(m.id, r),
      (e) => this.answer(m.id, null, e instanceof RpcError ? e : RpcError.from(e ?? {})),
    );
  }

  startSubscription(id, req) {
    if (typeof this.db.subscribe !== 'function') {
      this.open.delete(id);
      return this.queueJson(KIND.end, id, { error: { status: 501, error: 'not_implemented', reason: 'this peer serves no subscriptions' } });
    }
    const stop = this.db.subscribe(
      req,
      (batch) => {
        if (this.closed || !this.open.has(id)) return;
        // A subscriber that does not read while the database keeps changing would grow the
        // queue without end: past the limit its subscription ends (503), and it may subscribe
        // again from its last sequence.
        if (this.outBytes > SUBSCRIPTION_QUEUE_LIMIT) {
          this.subs.get(id)?.();
          this.subs.delete(id);
          this.open.delete(id);
          this.queueJson(KIND.end, id, { error: { status: 503, error: 'unavailable', reason: 'the subscriber reads too slowly' } });
          return;
        }
        this.queueJson(KIND.item, id, batch);
      },
      (err) => {
        if (this.closed || !this.open.delete(id)) return;
        this.subs.delete(id);
        this.queueJson(KIND.end, id, { error: err ? { status: err.status ?? 500, error: String(err.error ?? 'error'), reason: String(err.reason ?? '') } : null });
      },
    );
    this.subs.set(id, stop);
  }

  answer(id, r, err) {
    if (this.closed || !this.open.delete(id)) return; // cancelled meanwhile
    this.served++;
    if (err) return this.queueJson(KIND.response, id, { err: { status: err.status, error: err.error, reason: err.reason } });
    if (r.result === 'attachment') {
      if (r.data.length > this.peerMaxMessage) {
        return this.queueJson(KIND.response, id, { err: { status: 413, error: 'too_large', reason: 'attachment over the client limit' } });
      }
      this.queueJson(KIND.response, id, { attachment: { content_type: r.content_type, digest: r.digest, length: r.data.length } });
      return this.queue(KIND.binary, id, r.data);
    }
    this.queueJson(KIND.response, id, { ok: r });
  }

  onLinkClosed(reason) {
    for (const stop of this.subs.values()) stop();
    this.subs.clear();
    this.opts.log('link closed', reason);
    this.opts.onLinkClosed?.(this, reason);
  }
}

const SHARE_ID = /^share-[A-Za-z0-9_.-]{1,194}$/;
const PEER_ID = /^peer-[A-Za-z0-9_.-]{1,195}$/;

/**
 * Shares `db` on the hub: writes the share document (refreshed every `refresh` ms with an
 * expiry `ttl` ms ahead, as peerpouch nodes do), answers every peer that signals it and serves
 * it. opts: {name, info, key (Uint8Array), readOnly (default true), onRemote(evt) (called with
 * `{peer, info, preventDefault()}` before any answer; a prevented peer gets a refusal signal
 * and nothing else), log, onLinkClosed, ttl, refresh}. Returns `{share, links, unshare()}`.
 */
export async function share(hub, db, opts = {}) {
  const id = opts.id ?? `share-${randomHex()}`;
  const ttl = opts.ttl ?? 30000;
  const doc = { _id: id, type: SHARE_TYPE, name: opts.name ?? db.name ?? null, info: opts.info ?? null, protocol: 1, read_only: opts.readOnly ?? true };
  const since = await hub.updateSeq();
  let rev = await hub.put({ ...doc, expires_at: Date.now() + ttl });
  let stopped = false;
  const refresh = setInterval(async () => {
    try {
      rev = await hub.put({ ...doc, _rev: rev, expires_at: Date.now() + ttl });
    } catch (e) {
      opts.log?.('share refresh failed', String(e));
    }
  }, opts.refresh ?? 10000);
  const peers = new Map(); // peer id -> {link, signals} or {refused: true}
  const links = [];
  const feed = hub.follow(since, (d) => {
    if (stopped || d.type !== SIGNAL_TYPE || d.recipient !== id || typeof d.sender !== 'string' || !PEER_ID.test(d.sender)) return;
    let p = peers.get(d.sender);
    if (p?.refused) {
      hub.remove(d._id, d._rev).catch(() => {});
      return;
    }
    if (!p) {
      const evt = {
        peer: d.sender,
        info: d.info ?? null,
        defaultPrevented: false,
        preventDefault() {
          this.defaultPrevented = true;
        },
      };
      try {
        opts.onRemote?.(evt);
      } catch (e) {
        opts.log?.('onRemote threw; the peer is refused', String(e));
        evt.defaultPrevented = true;
      }
      if (evt.defaultPrevented) {
        peers.set(d.sender, { refused: true });
        hub.remove(d._id, d._rev).catch(() => {});
        new SignalOut(hub, id, d.sender, 's-signal-', null).send({ type: 'refuse', reason: null }).catch(() => {});
        opts.log?.('peer refused', d.sender);
        return;
      }
      const link = new ServerLink(id, db, { ...opts, frame: opts.frame ?? 32 * 1024 });
      const out = new SignalOut(hub, id, d.sender, 's-signal-', null);
      link.pc.onicecandidate = (e) =>
        out.send({ candidate: e.candidate ? e.candidate.toJSON() : null }).catch((err) => opts.log?.('candidate not sent', String(err)));
      link.pc.ondatachannel = (e) => link.attach(e.channel);
      link.peer = d.sender;
      link.info = d.info;
      const apply = async (data) => {
        try {
          if (data?.type === 'offer') {
            await link.pc.setRemoteDescription(data);
            await link.addHeldCandidates();
            await link.pc.setLocalDescription(await link.pc.createAnswer());
            await out.send(link.pc.localDescription.toJSON());
          } else if (data && 'candidate' in data) {
            await link.addCandidate(data.candidate);
          } else {
            opts.log?.('signal ignored', JSON.stringify(data).slice(0, 200));
          }
        } catch (e) {
          opts.log?.('signal not applied', String(e));
        }
      };
      // Descriptions and candidates are applied one after another, in signal order.
      let chain = Promise.resolve();
      p = { link, signals: new SignalIn(hub, (data) => (chain = chain.then(() => apply(data)))) };
      peers.set(d.sender, p);
      links.push(link);
    }
    p.signals.take(d);
  });
  return {
    share: id,
    links,
    async unshare() {
      if (stopped) return;
      stopped = true;
      clearInterval(refresh);
      feed.stop();
      for (const l of links) l.close('unshared');
      await hub.remove(id, rev);
    },
  };
}

/** Whether `id` has the shape of a share id (docs/protocol.md §1.1). */
export function isShareId(id) {
  return typeof id === 'string' && SHARE_ID.test(id);
}

// ---------------------------------------------------------------------------------------------
// MD5 (RFC 1321), for CouchDB attachment digests: WebCrypto has none.

export function md5(bytes) {
  const K = new Int32Array(64);
  for (let i = 0; i < 64; i++) K[i] = Math.floor(Math.abs(Math.sin(i + 1)) * 2 ** 32) | 0;
  const S = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];
  const n = bytes.length;
  const rem = n % 64;
  const full = n - rem;
  // The last one or two blocks: the remaining bytes, 0x80, zeros, the bit length (LE, 64 bits).
  const lastBlocks = rem < 56 ? 64 : 128;
  const tail = new Uint8Array(lastBlocks);
  tail.set(bytes.subarray(full));
  tail[rem] = 0x80;
  const lenAt = lastBlocks - 8;
  const lo = (n * 8) >>> 0;
  const hi = Math.floor(n / 2 ** 29) >>> 0;
  for (let i = 0; i < 4; i++) {
    tail[lenAt + i] = (lo >>> (8 * i)) & 0xff;
    tail[lenAt + 4 + i] = (hi >>> (8 * i)) & 0xff;
  }
  let a0 = 0x67452301, b0 = 0xefcdab89 | 0, c0 = 0x98badcfe | 0, d0 = 0x10325476;
  const M = new Int32Array(16);
  const block = (src, off) => {
    for (let i = 0; i < 16; i++) {
      const j = off + i * 4;
      M[i] = src[j] | (src[j + 1] << 8) | (src[j + 2] << 16) | (src[j + 3] << 24);
    }
    let A = a0, B = b0, C = c0, D = d0;
    for (let i = 0; i < 64; i++) {
      let F, g;
      if (i < 16) (F = (B & C) | (~B & D)), (g = i);
      else if (i < 32) (F = (D & B) | (~D & C)), (g = (5 * i + 1) & 15);
      else if (i < 48) (F = B ^ C ^ D), (g = (3 * i + 5) & 15);
      else (F = C ^ (B | ~D)), (g = (7 * i) & 15);
      const s = S[(i >>> 4) * 4 + (i & 3)];
      const x = (A + F + K[i] + M[g]) | 0;
      A = D;
      D = C;
      C = B;
      B = (B + ((x << s) | (x >>> (32 - s)))) | 0;
    }
    a0 = (a0 + A) | 0;
    b0 = (b0 + B) | 0;
    c0 = (c0 + C) | 0;
    d0 = (d0 + D) | 0;
  };
  for (let off = 0; off < full; off += 64) block(bytes, off);
  for (let off = 0; off < lastBlocks; off += 64) block(tail, off);
  const out = new Uint8Array(16);
  [a0, b0, c0, d0].forEach((w, i) => {
    out[i * 4] = w & 0xff;
    out[i * 4 + 1] = (w >>> 8) & 0xff;
    out[i * 4 + 2] = (w >>> 16) & 0xff;
    out[i * 4 + 3] = (w >>> 24) & 0xff;
  });
  return out;
}
