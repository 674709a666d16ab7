// What the page does for the Rust test (runtimes/cli/tests/browser.rs), called by drive.mjs.
// Each scenario returns plain JSON the test asserts on; progress goes out through report().
import * as pp from './peerpouch.js';

const report = (ev) => window.__report?.(JSON.stringify(ev));
const log = (...a) => report({ event: 'log', msg: a.map(String).join(' ') });
const failure = (e) => ({ status: e.status, error: e.error, reason: e.reason, name: e.name });

/** Deterministic bytes, the same as the Rust test's `pattern`: xorshift32, little endian. */
export function pattern(seed, length) {
  const words = new Uint32Array(Math.ceil(length / 4));
  let x = seed >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    words[i] = x;
  }
  // Uint32Array is little endian on every platform Chromium runs on here (x86-64).
  return new Uint8Array(words.buffer, 0, length);
}

const md5Digest = (data) => 'md5-' + btoa(String.fromCharCode(...pp.md5(data)));

/**
 * Joins a share served by a Rust node and runs the calls: hello, info, all_docs, get, errors,
 * a live changes subscription (the Rust side writes `from-rust` when it sees `subscribed`),
 * bulk_docs with an attachment, and a large attachment.
 *
 * p: {hub, share, key?, get, attachment: {id, name}, and optionally iceServers (RTCIceServer
 * list, default []), iceTransportPolicy ('all' | 'relay'), live (the ids the live subscription
 * waits for, default ['from-browser', 'from-rust']: a sharer that writes nothing gives
 * ['from-browser'])}. The result has `path`, the candidate pair ICE selected (getStats), and
 * `gathered`, the page's own candidates by type.
 */
export async function join(p) {
  const hub = new pp.Hub(p.hub);
  const key = p.key ? new TextEncoder().encode(p.key) : undefined;
  const opts = { key, info: { app: 'chromium' }, log };
  if (p.iceServers) opts.iceServers = p.iceServers;
  if (p.iceTransportPolicy) opts.iceTransportPolicy = p.iceTransportPolicy;
  const client = await pp.Client.open(hub, p.share, opts);
  window.__client = client;
  client.onclose = (reason) => report({ event: 'link-closed', reason });
  const res = { peer: client.peer, timings: client.timings, server_hello: client.server };
  res.path = await client.selectedPath();
  report({ event: 'path', path: res.path });
  res.info = await client.call({ op: 'info' });
  res.all_docs = await client.call({ op: 'all_docs', include_docs: true, limit: 3 });
  res.get = await client.call({ op: 'get', id: p.get, revs: true });
  res.missing = await client.call({ op: 'get', id: 'no-such-doc' }).then((r) => ({ unexpected: r }), failure);
  res.destroy = await client.call({ op: 'destroy' }).then((r) => ({ unexpected: r }), failure);

  const live = p.live ?? ['from-browser', 'from-rust'];
  const seen = new Map();
  let both;
  const gotBoth = new Promise((r) => (both = r));
  const sub = client.subscribe({ since: res.info.update_seq, include_docs: true }, (batch) => {
    for (const row of batch.results) seen.set(row.id, row);
    if (live.every((id) => seen.has(id))) both();
  });
  report({ event: 'subscribed' });
  res.bulk_docs = await client.call({
    op: 'bulk_docs',
    docs: [{ _id: 'from-browser', text: 'written by Chromium', _attachments: { 'note.txt': { content_type: 'text/plain', data: btoa('hello from the browser') } } }],
  });
  await gotBoth;
  sub.cancel();
  res.live = [...seen.values()].map((r) => ({ id: r.id, seq: r.seq, rev: r.changes[0].rev, doc: r.doc }));

  const t0 = performance.now();
  const att = await client.call({ op: 'get_attachment', id: p.attachment.id, name: p.attachment.name });
  const t1 = performance.now();
  res.attachment = {
    length: att.data.length,
    content_type: att.content_type,
    digest: att.digest,
    md5_matches: md5Digest(att.data) === att.digest,
    sha256: await pp.sha256Hex(att.data),
    ms: t1 - t0,
    mb_per_s: att.data.length / 1e6 / ((t1 - t0) / 1000),
  };
  res.info_after = await client.call({ op: 'info' });
  res.max_message_received = client.maxReceived;
  res.path_after = await client.selectedPath();
  res.gathered = client.gathered;
  return res;
}

/**
 * Shares an in-page database on the hub (the page answers): `docs` small documents and one with
 * a large attachment. Returns the share id and what the Rust side should read.
 */
export async function serve(p) {
  const hub = new pp.Hub(p.hub);
  const db = new pp.PageDb('chromium-db');
  const revs = {};
  for (let i = 0; i < p.docs; i++) {
    const id = `page-${String(i).padStart(3, '0')}`;
    revs[id] = await db.add({ _id: id, i, from: 'chromium' });
  }
  const data = pattern(p.attachment.seed, p.attachment.length);
  revs[p.attachment.id] = await db.add({ _id: p.attachment.id, kind: 'large' }, { [p.attachment.name]: { content_type: 'application/octet-stream', data } });
  const key = p.key ? new TextEncoder().encode(p.key) : undefined;
  const s = await pp.share(hub, db, {
    name: 'chromium-db',
    info: { app: 'chromium' },
    key,
    log,
    onLinkClosed: (link, reason) =>
      report({ event: 'link-closed', peer: link.peer, reason, served: link.served, max_message_received: link.maxReceived }),
  });
  window.__share = s;
  return { share: s.share, revs, sha256: await pp.sha256Hex(data), digest: md5Digest(data) };
}

/** Stops sharing: the share document is deleted, links close. */
export async function unshare() {
  await window.__share.unshare();
  return { ok: true };
}
