// What the page does for the Rust test (runtimes/cli/tests/browser.rs), called by drive.mjs.
// Each scenario returns plain JSON the test asserts on; progress goes out through report().
import * as pp from './peerpouch.js';
import PeerPouch from '../../runtimes/pouchdb/index.js';

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

// ---------------------------------------------------------------------------------------------
// PouchDB with the peerpouch package (runtimes/pouchdb): page.html loads PouchDB's browser
// build (window.PouchDB, from npm) and the plugin is installed once.

const PouchDB = window.PouchDB;
if (PouchDB) PouchDB.plugin(PeerPouch);
const pouchFailure = (e) => ({ status: e.status, name: e.name, message: e.message, error: e.error, reason: e.reason });
const byRev = (a, b) => (a.rev < b.rev ? -1 : a.rev > b.rev ? 1 : 0);

/**
 * Every leaf of every id as `{rev, deleted, revisions}` (from `get(id, {revs: true, open_revs:
 * 'all'})`), sorted by rev, and the winner (`allDocs` with keys: rev and deleted) with its
 * `_conflicts`: what the Rust side compares with its own store's answers.
 */
export async function pouchTrees(db, ids) {
  const out = {};
  const winners = await db.allDocs({ keys: ids });
  for (const [i, id] of ids.entries()) {
    const leaves = await db.get(id, { revs: true, open_revs: 'all' });
    const w = winners.rows[i];
    let conflicts = [];
    if (w.value && !w.value.deleted) conflicts = (await db.get(id, { conflicts: true }))._conflicts ?? [];
    out[id] = {
      leaves: leaves
        .map((l) => (l.ok ? { rev: l.ok._rev, deleted: !!l.ok._deleted, revisions: l.ok._revisions } : { rev: l.missing, missing: true }))
        .sort(byRev),
      winner: w.value ? { rev: w.value.rev, deleted: !!w.value.deleted } : null,
      conflicts: [...conflicts].sort(),
    };
  }
  return out;
}

const shareName = (p) => `peer+${p.hub}#${p.share}`;

/**
 * Opens a Rust node's share with the `peerpouch` adapter and replicates it into IndexedDB with
 * PouchDB's own replicator; then runs the adapter's other methods against it.
 * p: {hub, share, key, ids (documents whose trees are compared), attachment: {id, name}}.
 */
export async function pouchPull(p) {
  const remote = new PouchDB(shareName(p), { key: p.key, info: { app: 'chromium-pouchdb' } });
  const local = new PouchDB(`pull-${Date.now()}`);
  window.__remote = remote;
  window.__local = local;
  const res = { remote_adapter: remote.adapter, local_adapter: local.adapter };
  const t0 = performance.now();
  const rep = await PouchDB.replicate(remote, local);
  res.ms = performance.now() - t0;
  res.replicate = { ok: rep.ok, docs_read: rep.docs_read, docs_written: rep.docs_written, doc_write_failures: rep.doc_write_failures, errors: rep.errors.map(String) };
  res.local_info = await local.info();
  res.local_ids = (await local.allDocs()).rows.map((r) => r.id);
  res.local_trees = await pouchTrees(local, p.ids);
  res.remote_trees = await pouchTrees(remote, p.ids);
  const blob = await local.getAttachment(p.attachment.id, p.attachment.name);
  const data = new Uint8Array(await blob.arrayBuffer());
  res.attachment = { length: data.length, type: blob.type, sha256: await pp.sha256Hex(data) };
  res.remote_info = await remote.info();
  res.remote_id = await remote.id();
  res.local_doc = await remote.get('_local/note');
  res.put_local = await remote.put({ _id: '_local/from-page', by: 'chromium' });
  res.all_docs = await remote.allDocs({ startkey: 'doc-001', limit: 2, include_docs: true });
  res.all_docs_keys = await remote.allDocs({ keys: ['doc-000', 'no-such-doc'] });
  res.changes = await remote.changes({ since: 0, limit: 3, style: 'all_docs' });
  res.revs_diff = await remote.revsDiff({ 'doc-000': [res.all_docs_keys.rows[0].value.rev, '9-nope'] });
  res.bulk_get = await remote.bulkGet({ docs: [{ id: 'doc-000' }], revs: true });
  res.missing = await remote.get('no-such-doc').then((d) => ({ unexpected: d }), pouchFailure);
  res.docs_with_attachment = await remote.get(p.attachment.id, { attachments: true, binary: true }).then((d) => {
    const a = d._attachments[p.attachment.name];
    return { is_blob: a.data instanceof Blob, size: a.data.size };
  });
  return res;
}

/**
 * While apart from the node (which edits too): edits in IndexedDB, then `local.sync(remote)`
 * (both directions, PouchDB's replicator), and the trees of both sides through their own APIs.
 */
export async function pouchEditAndSync(p) {
  const local = window.__local;
  const remote = window.__remote;
  const one = await local.get('doc-001');
  await local.put({ ...one, text: 'edited in the browser' });
  const two = await local.get('doc-002');
  await local.put({ ...two, text: 'the browser says' });
  const three = await local.get('doc-003');
  await local.remove(three);
  await local.put({
    _id: 'from-page',
    text: 'written in IndexedDB',
    _attachments: { 'note.txt': { content_type: 'text/plain', data: new Blob(['hello from the page'], { type: 'text/plain' }) } },
  });
  const sync = await local.sync(remote);
  return {
    push: { ok: sync.push.ok, docs_written: sync.push.docs_written, errors: sync.push.errors.map(String) },
    pull: { ok: sync.pull.ok, docs_written: sync.pull.docs_written, errors: sync.pull.errors.map(String) },
    local_trees: await pouchTrees(local, p.ids),
    remote_trees: await pouchTrees(remote, p.ids),
  };
}

/**
 * What a share refuses: a wrong key, writes to a read-only share (PouchDB's 403 shape; `_local`
 * documents still go), and `destroy()` closes the link without destroying anything.
 * p: {hub, share, key, readOnlyShare}.
 */
export async function pouchRefusals(p) {
  const res = {};
  const wrong = new PouchDB(shareName(p), { key: 'not the key' });
  res.wrong_key = await wrong.info().then((i) => ({ unexpected: i }), pouchFailure);
  const ro = new PouchDB(shareName({ ...p, share: p.readOnlyShare }), { key: p.key });
  res.read_only_bulk = await ro.bulkDocs([{ _id: 'nope' }]).then((r) => ({ unexpected: r }), pouchFailure);
  res.read_only_put = await ro.put({ _id: 'nope' }).then((r) => ({ unexpected: r }), pouchFailure);
  res.read_only_local = await ro.put({ _id: '_local/checkpoint', seq: 1 }).then((r) => r.ok, pouchFailure);
  res.read_only_info = await ro.info();
  const remote = new PouchDB(shareName(p), { key: p.key });
  const before = await remote.info();
  res.destroy = await remote.destroy();
  const again = new PouchDB(shareName(p), { key: p.key });
  const after = await again.info();
  res.doc_count = { before: before.doc_count, after: after.doc_count };
  await again.close();
  await ro.close();
  return res;
}

/**
 * The page shares an IndexedDB PouchDB on the hub (`hub.shareDatabase`): documents, a conflict,
 * a deletion, an attachment. Peers whose info says `intruder` are refused in `onRemote`.
 * p: {hub, key, docs}.
 */
export async function pouchShare(p) {
  const db = new PouchDB(`shared-${Date.now()}`);
  const docs = [];
  for (let i = 0; i < p.docs; i++) docs.push({ _id: `page-${String(i).padStart(3, '0')}`, i, from: 'chromium' });
  docs.push({ _id: 'gone', text: 'deleted later' });
  docs.push({ _id: 'with-att', _attachments: { 'a.bin': { content_type: 'application/octet-stream', data: new Blob([pattern(5, 100000)]) } } });
  await db.bulkDocs(docs);
  await db.remove(await db.get('gone'));
  // A conflict, as a replication from elsewhere would bring it.
  await db.bulkDocs([{ _id: 'page-001', _rev: '1-ffffffffffffffffffffffffffffffff', i: -1, _revisions: { start: 1, ids: ['ffffffffffffffffffffffffffffffff'] } }], { new_edits: false });
  const hub = new PouchDB(p.hub);
  window.__shared = db;
  window.__hub = hub;
  const remotes = [];
  const handle = await hub.shareDatabase(db, {
    name: 'browser-share',
    key: p.key,
    info: { app: 'chromium' },
    onRemote(evt) {
      remotes.push(evt.info);
      report({ event: 'remote', info: evt.info });
      if (evt.info?.app === 'intruder') evt.preventDefault();
    },
    log,
  });
  window.__remotes = remotes;
  const listed = await hub.getSharedDatabases();
  return { share: handle.id, dbname: handle.dbname, name: handle.name, listed_own: listed.some((s) => s.id === handle.id), ids: [...docs.map((d) => d._id)] };
}

/** The trees of the page's shared database, and the peers `onRemote` saw. p: {ids}. */
export async function pouchSharedTrees(p) {
  return { trees: await pouchTrees(window.__shared, p.ids), remotes: window.__remotes, info: await window.__shared.info() };
}

/** Edits in the page's shared database (for the CLI to pull back). */
export async function pouchSharedEdit() {
  const d = await window.__shared.get('page-002');
  const r = await window.__shared.put({ ...d, text: 'edited after the push' });
  return { rev: r.rev };
}

/** Stops sharing the page's database: its share document goes. */
export async function pouchUnshare() {
  await window.__hub.unshareDatabase(window.__shared);
  return { ok: true };
}

/** The hub's shares as another page lists them (`getSharedDatabases`). p: {hub}. */
export async function pouchListShares(p) {
  const hub = new PouchDB(p.hub);
  return hub.getSharedDatabases();
}

/**
 * Live: `local.sync(remote, {live: true, retry: true})` with a share opened by its name (so a
 * restarted sharer, with a new share id, is found again). Every document pulled is reported
 * (`live-pulled`), and the state changes (`live-paused`, `live-active`, `live-error`).
 * p: {hub, name, key}.
 */
export async function pouchLiveStart(p) {
  const local = new PouchDB(`live-${Date.now()}`);
  const remote = new PouchDB(`peer+${p.hub}#${p.name}`, { key: p.key });
  const pulled = [];
  const sync = local.sync(remote, { live: true, retry: true, back_off_function: (d) => (d === 0 ? 250 : Math.min(d * 2, 2000)) });
  sync.on('change', (info) => {
    if (info.direction !== 'pull') return;
    for (const d of info.change.docs) {
      pulled.push(d._id);
      report({ event: 'live-pulled', id: d._id, rev: d._rev });
    }
  });
  sync.on('paused', (err) => report({ event: 'live-paused', err: err ? String(err) : null }));
  sync.on('active', () => report({ event: 'live-active' }));
  sync.on('error', (e) => report({ event: 'live-error', err: String(e) }));
  window.__live = { local, remote, sync, pulled };
  return { ok: true };
}

/** Stops the live sync; what it pulled, and the local database's documents. */
export async function pouchLiveStop() {
  const { local, sync, pulled } = window.__live;
  sync.cancel();
  return { pulled, ids: (await local.allDocs()).rows.map((r) => r.id) };
}

/**
 * One timed pull for the bench: `PouchDB.replicate(source, fresh IndexedDB)`, where source is a
 * share's name (the adapter) or a CouchDB URL (PouchDB's HTTP adapter). p: {source, key}.
 */
export async function pouchTimedPull(p) {
  const source = new PouchDB(p.source, p.key ? { key: p.key } : {});
  const local = new PouchDB(`bench-${Date.now()}-${Math.random().toString(16).slice(2)}`);
  const t0 = performance.now();
  const r = await PouchDB.replicate(source, local);
  const ms = performance.now() - t0;
  const info = await local.info();
  await local.destroy();
  await source.close();
  return { ms, docs_written: r.docs_written, ok: r.ok, doc_count: info.doc_count };
}

// ---------------------------------------------------------------------------------------------
// Conformance: the adapter (a Rust share) and PouchDB's HTTP adapter (pouchdb-server) driven
// side by side with the same seeded sequence of PouchDB calls; their answers must agree.

/** A seeded generator (mulberry32): the same sequence of calls on every run. */
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * An answer with what may differ taken out: a revision made by a new edit keeps its position
 * only (each implementation hashes new edits its own way; revisions given with new_edits:false
 * are kept whole), sequence numbers go (each database numbers its own feed), errors keep their
 * status and name, and `_local` revisions their form `0-N`.
 */
function normalize(x, given) {
  const rev = (r) => {
    if (typeof r !== 'string') return r;
    const m = /^(\d+)-(.*)$/.exec(r);
    if (!m) return r;
    return given.has(r) ? r : `${m[1]}-*`;
  };
  const walk = (v, key) => {
    if (Array.isArray(v)) {
      const out = v.map((e) => walk(e, key));
      if (key === 'changes') return out.sort((u, v) => (u.rev < v.rev ? -1 : u.rev > v.rev ? 1 : 0));
      return key === '_conflicts' || key === 'missing' ? out.sort() : out;
    }
    if (v && typeof v === 'object') {
      const o = {};
      for (const k of Object.keys(v).sort()) {
        // Documented differences (tests/browser/README.md): `offset` (peerpouch counts the
        // rows before the first one, as CouchDB does; PouchDB gives `skip`), and revs_diff's
        // `possible_ancestors` (CouchDB's and peerpouch's; PouchDB has none).
        // `_deleted_conflicts` likewise (PouchDB ignores the option), and a `doc: null` that
        // PouchDB adds to deleted rows of allDocs with keys even without include_docs.
        if (k === 'doc' && v[k] === null) continue;
        if (['offset', 'possible_ancestors', '_deleted_conflicts', 'seq', 'last_seq', 'update_seq', 'host', 'adapter', 'db_name', 'db_uuid', 'stack', 'docId', 'message', 'reason', 'instance_start_time', 'purge_seq', 'sizes', 'compact_running', 'disk_format_version', 'data_size', 'disk_size', 'other', 'committed_update_seq', 'backend_adapter', 'auto_compaction', 'pending'].includes(k)) continue;
        o[k] = walk(v[k], k);
      }
      if (o.ids && typeof o.start === 'number' && key === '_revisions') {
        // A history: given ids stay, new-edit hashes become '*'.
        o.ids = o.ids.map((id, i) => (given.has(`${o.start - i}-${id}`) ? id : '*'));
      }
      return o;
    }
    if (['rev', '_rev'].includes(key)) return rev(v);
    if (key === undefined || key === 'value' || typeof v !== 'string') return v;
    return /^\d+-[0-9a-f]{32}$/.test(v) ? rev(v) : v;
  };
  return walk(x);
}

const leafRev = (l) => l.ok?._rev ?? l.missing;
const settle = (p) =>
  p.then(
    (r) => ({ ok: r }),
    (e) => ({ err: { status: e.status, name: e.name } }),
  );

/**
 * Runs `p.ops` seeded calls on both databases and compares each pair of answers.
 * p: {adapter: dbname, key, http: URL, seed, ops}. Returns {ops, by_kind, mismatches (the
 * first 20: kind, call, both answers)}.
 */
export async function pouchConformance(p) {
  const a = new PouchDB(p.adapter, { key: p.key });
  const h = new PouchDB(p.http);
  const rand = rng(p.seed);
  const pick = (arr) => arr[Math.floor(rand() * arr.length)];
  const given = new Set();
  const newIds = Array.from({ length: 40 }, (_, i) => `n-${String(i).padStart(2, '0')}`);
  const repIds = Array.from({ length: 20 }, (_, i) => `r-${String(i).padStart(2, '0')}`);
  const localIds = ['_local/a', '_local/b', '_local/c'];
  const repTips = new Map(); // r- id -> [{pos, ids}] branches given so far
  const hex = () => Array.from({ length: 32 }, () => Math.floor(rand() * 16).toString(16)).join('');
  const mismatches = [];
  const byKind = {};
  // Each side's own current revisions (new edits differ in hash).
  const revs = [new Map(), new Map()];
  const both = async (kind, call, f) => {
    byKind[kind] = (byKind[kind] ?? 0) + 1;
    const [ra, rh] = [await settle(f(a, 0)), await settle(f(h, 1))];
    const [na, nh] = [normalize(ra, given), normalize(rh, given)];
    if (JSON.stringify(na) !== JSON.stringify(nh) && mismatches.length < 20) mismatches.push({ kind, call, adapter: na, http: nh });
    return [ra, rh];
  };
  const remember = (side, id, r) => {
    if (r.ok?.rev) revs[side].set(id, r.ok.rev);
  };
  for (let n = 0; n < p.ops; n++) {
    const x = rand();
    if (x < 0.22) {
      // put: a new document or an update of one (each side with its own current rev)
      const id = pick(newIds);
      const body = { v: Math.floor(rand() * 1000), tag: pick(['x', 'y', 'z']) };
      const withAtt = rand() < 0.15;
      const att = withAtt ? { 'f.txt': { content_type: 'text/plain', data: btoa(`attachment ${Math.floor(rand() * 100)}`) } } : undefined;
      await both('put', { id, body, att: !!att }, async (db, side) => {
        const doc = { _id: id, ...body };
        if (revs[side].has(id)) doc._rev = revs[side].get(id);
        if (att) doc._attachments = att;
        const r = await db.put(doc);
        remember(side, id, { ok: r });
        return r;
      });
    } else if (x < 0.3) {
      // a stale put: conflict (409) on both
      const id = pick(newIds);
      await both('stale put', { id }, (db, side) => (revs[side].has(id) ? db.put({ _id: id, _rev: `1-${'0'.repeat(32)}` }) : db.get(id)));
    } else if (x < 0.36) {
      const id = pick(newIds);
      await both('remove', { id }, async (db, side) => {
        if (!revs[side].has(id)) return db.get(id);
        const r = await db.remove(id, revs[side].get(id));
        // Deleted: the next put recreates it without a _rev. (A put with a made-up _rev on a
        // deleted document differs: PouchDB takes it as a new branch, CouchDB and peerpouch
        // answer 409.)
        revs[side].delete(id);
        return r;
      });
    } else if (x < 0.5) {
      // replicated revisions: a branch given with new_edits:false (conflicts, tombstones)
      const id = pick(repIds);
      const branches = repTips.get(id) ?? [];
      let ids;
      let start;
      let extended = null;
      if (branches.length && rand() < 0.6) {
        const base = pick(branches);
        extended = base;
        const grow = 1 + Math.floor(rand() * 2);
        ids = [...Array.from({ length: grow }, hex), ...base.ids];
        start = base.pos + grow;
      } else {
        start = 1 + Math.floor(rand() * 3);
        ids = Array.from({ length: start }, hex);
      }
      ids.forEach((h2, i) => given.add(`${start - i}-${h2}`));
      // A grown branch's old tip is no longer a leaf: peerpouch keeps leaf bodies only
      // (documented), so only leaves are asked for by revision.
      if (extended) branches.splice(branches.indexOf(extended), 1);
      branches.push({ pos: start, ids });
      repTips.set(id, branches);
      const doc = { _id: id, _rev: `${start}-${ids[0]}`, _revisions: { start, ids }, w: Math.floor(rand() * 100) };
      if (rand() < 0.15) doc._deleted = true;
      await both('bulkDocs new_edits:false', { id, rev: doc._rev }, (db) => db.bulkDocs([doc], { new_edits: false }));
    } else if (x < 0.62) {
      const id = pick(rand() < 0.5 ? repIds : newIds);
      const opts = pick([{}, { revs: true }, { conflicts: true }, { revs: true, open_revs: 'all' }, { attachments: true }, { deleted_conflicts: true }]);
      await both('get', { id, opts }, (db) => db.get(id, opts).then((r) => (Array.isArray(r) ? [...r].sort((u, v) => (leafRev(u) < leafRev(v) ? -1 : 1)) : r)));
    } else if (x < 0.68) {
      const id = pick(localIds);
      const op = rand();
      await both('_local', { id, op }, async (db) => {
        const cur = await db.get(id).catch(() => null);
        if (op < 0.5) return db.put({ ...(cur ?? { _id: id }), n: Math.floor(op * 100) });
        if (op < 0.7 && cur) return db.remove(cur);
        return db.get(id);
      });
    } else if (x < 0.82) {
      const lo = pick([...newIds, ...repIds]);
      const opts = pick([
        {},
        { include_docs: true },
        { startkey: lo, limit: 5 },
        { startkey: lo, endkey: 'r-10', inclusive_end: false },
        { descending: true, limit: 7, skip: 2 },
        { keys: [lo, 'nope', 'n-01'] },
        { include_docs: true, conflicts: true, startkey: 'r-' },
        { key: lo },
      ]);
      // A range whose start is past its end: CouchDB and peerpouch answer 400, PouchDB no
      // rows (documented); compared as "nothing".
      const reversed = opts.startkey !== undefined && opts.endkey !== undefined && opts.startkey > opts.endkey;
      await both('allDocs', { opts }, (db) => (reversed ? db.allDocs(opts).then((r) => r.rows.length, (e) => (e.status === 400 ? 0 : Promise.reject(e))) : db.allDocs(opts)));
    } else if (x < 0.92) {
      const opts = pick([{ style: 'all_docs' }, { include_docs: true }, { limit: 5 }, { doc_ids: [pick(newIds), pick(repIds)] }, { style: 'all_docs', conflicts: true, include_docs: true }]);
      await both('changes', { opts }, (db) =>
        db.changes(opts).then((r) => ({ results: [...r.results].sort((u, v) => (u.id < v.id ? -1 : u.id > v.id ? 1 : 0)) })),
      );
    } else if (x < 0.96) {
      const id = pick(repIds);
      const known = (repTips.get(id) ?? []).map((b) => `${b.pos}-${b.ids[0]}`);
      const q = { [id]: [...known.slice(0, 2), `9-${hex()}`] };
      given.add(q[id][q[id].length - 1]);
      await both('revsDiff', { q }, (db) => db.revsDiff(q));
    } else {
      const id = pick(repIds);
      const known = (repTips.get(id) ?? []).map((b) => `${b.pos}-${b.ids[0]}`);
      const docs = known.length ? [{ id, rev: known[0] }, { id: 'nope' }] : [{ id }];
      // Found or not: how a server words a missing document differs (pouchdb-server 4.2.0's
      // answer carries no error fields), so only the found ones are compared whole.
      await both('bulkGet', { docs }, (db) =>
        db.bulkGet({ docs, revs: true }).then((r) => ({ results: r.results.map((x) => ({ id: x.id, docs: x.docs.map((d) => (d.ok ? { ok: d.ok } : { missing: true })) })) })),
      );
    }
  }
  await a.close();
  await h.close();
  return { ops: p.ops, by_kind: byKind, mismatches };
}

/** Watches the hub's shares (`getSharedDatabases({onChange})`): each change is reported. p: {hub}. */
export async function pouchWatchShares(p) {
  const hub = new PouchDB(p.hub);
  const listed = await hub.getSharedDatabases({ onChange: (share) => report({ event: 'share-change', share }) });
  window.__watch = listed;
  return listed;
}
