// The PouchDB plugin: hub methods (shareDatabase, unshareDatabase, getSharedDatabases) and the
// `peerpouch` adapter that makes a share a PouchDB database.
import { Client, RpcError, SHARE_TYPE, isShareId, share as shareOnHub } from './protocol.js';
import * as map from './mapping.js';
import { attachmentsToBase64, attachmentsToBinary, toBinary, toBytes } from './binary.js';

const PREFIX = 'peer+';
const enc = new TextEncoder();

/**
 * Splits a share's database name `peer+HUB#SHARE` into the hub's name (a URL, or a local
 * database's name) and the share (an id `share-…` or a share name).
 * @param {string} name
 * @returns {{hub: string, share: string}}
 */
export function parseDbName(name) {
  if (typeof name !== 'string' || !name.startsWith(PREFIX)) throw new map.PouchError(400, 'bad_request', `not a share's name (peer+HUB#SHARE): ${name}`);
  const rest = name.slice(PREFIX.length);
  const at = rest.lastIndexOf('#');
  if (at <= 0 || at === rest.length - 1) throw new map.PouchError(400, 'bad_request', `a share's name is peer+HUB#SHARE: ${name}`);
  return { hub: rest.slice(0, at), share: decodeURIComponent(rest.slice(at + 1)) };
}

/** The access key as bytes: a string (UTF-8) or bytes. */
function keyBytes(key) {
  if (key === undefined || key === null || key === '') return undefined;
  if (typeof key === 'string') return enc.encode(key);
  if (key instanceof Uint8Array) return key;
  if (key instanceof ArrayBuffer) return new Uint8Array(key);
  throw new TypeError('key must be a string or bytes');
}

/** Whether a share document is live (not expired) at `now` (ms). */
function live(doc, now) {
  return typeof doc.expires_at !== 'number' || doc.expires_at > now;
}

/** The hub interface protocol.js uses, over any PouchDB database (remote or local). */
export class PouchHub {
  constructor(db) {
    this.db = db;
  }
  async updateSeq() {
    return (await this.db.info()).update_seq;
  }
  async put(doc) {
    return (await this.db.put(doc)).rev;
  }
  async remove(id, rev) {
    return this.db.remove(id, rev);
  }
  /** Follows the hub's changes from `since`: `onDoc(doc)` for every live document, `onDeleted(id)`. */
  follow(since, onDoc, onError = () => {}, onDeleted = () => {}) {
    let stopped = false;
    let feed = null;
    let seq = since;
    let retry = null;
    const run = () => {
      if (stopped) return;
      feed = this.db.changes({ live: true, since: seq, include_docs: true, style: 'all_docs', return_docs: false });
      feed.on('change', (c) => {
        seq = c.seq;
        if (c.deleted || c.doc?._deleted) onDeleted(c.id);
        else if (c.doc) onDoc(c.doc);
      });
      feed.on('error', (e) => {
        if (stopped) return;
        onError(e);
        retry = setTimeout(run, 500);
      });
    };
    run();
    return {
      stop() {
        stopped = true;
        clearTimeout(retry);
        feed?.cancel();
      },
    };
  }
}

/** Serves peerpouch's calls from a PouchDB database (what a browser share answers with). */
export class ServedPouch {
  constructor(db, uuid) {
    this.db = db;
    this.name = db.name;
    this.uuid = uuid;
  }

  async execute(req) {
    try {
      return await this.run(req);
    } catch (e) {
      if (e instanceof RpcError) throw e;
      const c = map.fromPouchError(e);
      throw new RpcError(c.status, c.error, c.reason);
    }
  }

  async run(req) {
    const db = this.db;
    const pick = (o, keys) => Object.fromEntries(keys.filter((k) => o[k] !== undefined && o[k] !== false).map((k) => [k, o[k]]));
    switch (req.op) {
      case 'info': {
        const i = await db.info();
        const out = { result: 'info', db_name: i.db_name ?? this.name, doc_count: i.doc_count ?? 0, doc_del_count: i.doc_del_count ?? 0, update_seq: i.update_seq };
        if (this.uuid) out.db_uuid = this.uuid;
        return out;
      }
      case 'get':
        return { result: 'doc', doc: await db.get(req.id, pick(req, ['rev', 'revs', 'conflicts', 'deleted_conflicts', 'attachments', 'atts_since', 'latest'])) };
      case 'open_revs': {
        const revs = await db.get(req.id, { open_revs: req.open_revs, ...pick(req, ['revs', 'attachments', 'atts_since', 'latest']) });
        return { result: 'open_revs', revs };
      }
      case 'all_docs':
        return { result: 'all_docs', ...(await db.allDocs(map.pouchAllDocsOptions(req))) };
      case 'bulk_docs': {
        const rows = await db.bulkDocs(req.docs ?? [], { new_edits: req.new_edits !== false });
        return { result: 'bulk_docs', results: rows.map(map.fromPouchBulkRow) };
      }
      case 'changes':
        return { result: 'changes', ...(await this.changes(req)) };
      case 'revs_diff':
        return { result: 'revs_diff', missing: await db.revsDiff(req.revs ?? {}) };
      case 'bulk_get': {
        const r = await db.bulkGet({ docs: req.docs ?? [], ...pick(req, ['revs', 'attachments', 'latest']) });
        return { result: 'bulk_get', ...map.fromPouchBulkGet(r) };
      }
      case 'get_attachment': {
        const opts = req.rev ? { rev: req.rev } : {};
        const doc = await db.get(req.id, opts);
        const meta = doc._attachments?.[req.name];
        if (!meta) throw new RpcError(404, 'not_found', 'Document is missing attachment');
        const data = await toBytes(await db.getAttachment(req.id, req.name, opts));
        return { result: 'attachment', content_type: meta.content_type, digest: meta.digest, data };
      }
      case 'get_local':
        return { result: 'doc', doc: await db.get(localId(req.id)) };
      case 'put_local': {
        const r = await db.put({ ...req.doc, _id: localId(req.id) });
        return { result: 'written', ok: true, id: r.id, rev: r.rev };
      }
      case 'delete_local': {
        const r = await db.remove(localId(req.id), req.rev);
        return { result: 'written', ok: true, id: r.id, rev: r.rev };
      }
      default:
        throw new RpcError(501, 'not_implemented', `unknown operation ${String(req.op).slice(0, 40)}`);
    }
  }

  /** A one-shot changes answer; `feed: longpoll` waits (up to `timeout_ms`) for a change. */
  async changes(req) {
    const r = await this.db.changes(map.pouchChangesOptions(req));
    if (r.results.length || req.feed !== 'longpoll') return { results: r.results, last_seq: r.last_seq };
    await new Promise((resolve) => {
      const feed = this.db.changes({ live: true, since: r.last_seq, limit: 1, return_docs: false });
      const done = () => {
        clearTimeout(t);
        feed.cancel();
        resolve();
      };
      const t = setTimeout(done, Math.min(req.timeout_ms ?? 30000, 60000));
      feed.on('change', done);
      feed.on('error', done);
    });
    const again = await this.db.changes(map.pouchChangesOptions({ ...req, since: r.last_seq }));
    return { results: again.results, last_seq: again.last_seq };
  }

  /** Live changes from `req.since`, in batches (the changes PouchDB reported in one turn). */
  subscribe(req, onBatch, onEnd) {
    const opts = { ...map.pouchChangesOptions(req), live: true, return_docs: false };
    delete opts.limit;
    const feed = this.db.changes(opts);
    let batch = [];
    let timer = null;
    const flush = () => {
      timer = null;
      if (!batch.length) return;
      const results = batch;
      batch = [];
      onBatch({ results, last_seq: results[results.length - 1].seq });
    };
    feed.on('change', (c) => {
      batch.push(c);
      timer ??= setTimeout(flush, 0);
    });
    feed.on('error', (e) => onEnd(map.fromPouchError(e)));
    return () => {
      clearTimeout(timer);
      feed.cancel();
    };
  }
}

function localId(id) {
  return String(id).startsWith('_local/') ? String(id) : `_local/${id}`;
}

/** Wraps an async method in PouchDB's calling conventions: promise, and a callback last. */
function method(fn) {
  return function (...args) {
    const cb = typeof args[args.length - 1] === 'function' ? args.pop() : null;
    const p = fn.apply(this, args);
    if (cb) p.then((r) => cb(null, r), (e) => cb(e));
    return p;
  };
}

/**
 * The PouchDB plugin. `PouchDB.plugin(PeerPouch)` adds the hub methods to every database, the
 * `peerpouch` adapter, and makes names that start with `peer+` use it.
 *
 * @example
 * import PouchDB from 'pouchdb';
 * import PeerPouch from 'peerpouch';
 * PouchDB.plugin(PeerPouch);
 * const hub = new PouchDB('https://couch.example.org/hub');
 * const [share] = await hub.getSharedDatabases();
 * const remote = new PouchDB(share.dbname, { key: 'open sesame' });
 * await PouchDB.replicate(remote, new PouchDB('copy'));
 */
export default function PeerPouch(PouchDB) {
  if (PouchDB.adapters?.peerpouch) return;
  const ownShares = new Map(); // db -> handle
  const ownIds = new Set();

  // Names `peer+…` pick the adapter: PouchDB's own parser reads `peer+http://…` as an http URL.
  const internal = Object.getPrototypeOf(PouchDB.prototype);
  const setup = internal._setup;
  internal._setup = function (name, opts) {
    const n = name && typeof name === 'object' ? name.name : name;
    if (typeof n === 'string' && n.startsWith(PREFIX)) {
      if (name && typeof name === 'object') name = { ...name, adapter: 'peerpouch' };
      else opts = { ...(opts ?? {}), adapter: 'peerpouch' };
    }
    return setup.call(this, name, opts);
  };

  function PeerAdapter(opts, callback) {
    const api = this;
    const { hub: hubName, share } = parseDbName(api.name);
    const linkOpts = {
      key: keyBytes(opts.key),
      info: opts.info ?? null,
      iceServers: opts.iceServers ?? [],
      iceTransportPolicy: opts.iceTransportPolicy ?? 'all',
      log: opts.log ?? (() => {}),
    };
    let hubDb = null;
    let link = null; // a promise of a ready Client

    /** The link, opened on first use and again after it closed. */
    function client() {
      if (!link) {
        link = (async () => {
          hubDb ??= new PouchDB(hubName, { skip_setup: true });
          const hub = new PouchHub(hubDb);
          const id = isShareId(share) ? share : await shareIdByName(hubDb, share);
          const c = await Client.open(hub, id, linkOpts);
          c.onclose = () => {
            if (link === current) link = null;
          };
          api.peer = c.peer;
          return c;
        })();
        const current = link;
        link.catch(() => {
          if (link === current) link = null;
        });
      }
      return link;
    }

    async function call(req) {
      try {
        return await (await client()).call(req);
      } catch (e) {
        throw map.toPouchError(e);
      }
    }

    api._remote = true;
    api.type = () => 'peerpouch';
    /** The open link's Client (for its path, timings and server hello), opening it if needed. */
    api.link = () => client();

    // PouchDB's wrappers resolve with what these return when it is a promise: they return
    // nothing and answer through the callback.
    // The database's identity names it in replication ids, so checkpoints are found again
    // after the sharer restarts (a new share id): the hello's db_uuid, else info's, else the
    // share id.
    api._id = (cb) => {
      (async () => {
        const c = await client();
        const uuid = c.server?.db_uuid ?? (await c.call({ op: 'info' })).db_uuid;
        return `peerpouch:${uuid ?? c.share}`;
      })().then(
        (id) => cb(null, id),
        (e) => cb(map.toPouchError(e)),
      );
    };
    api._info = (cb) => {
      call({ op: 'info' }).then((r) => cb(null, { ...map.infoResponse(r), host: api.name }), cb);
    };

    api.get = method(async function (id, opts = {}) {
      if (typeof id !== 'string') throw new map.PouchError(400, 'bad_request', 'Invalid document id');
      const res = map.getResponse(await call(map.getRequest(id, opts)));
      if (opts.attachments && opts.binary) {
        if (Array.isArray(res)) for (const r of res) r.ok && attachmentsToBinary(r.ok);
        else attachmentsToBinary(res);
      }
      return res;
    });
    api._getLocal = (id, cb) => {
      call(map.getRequest(id)).then((r) => cb(null, map.getResponse(r)), cb);
    };
    api._putLocal = (doc, opts, cb) => {
      if (typeof opts === 'function') cb = opts;
      call(map.putLocalRequest(doc)).then((r) => cb(null, map.writtenResponse(r)), cb);
    };
    api._removeLocal = (doc, opts, cb) => {
      if (typeof opts === 'function') cb = opts;
      call(map.deleteLocalRequest(doc)).then((r) => cb(null, map.writtenResponse(r)), cb);
    };
    api._allDocs = (opts, cb) => {
      call(map.allDocsRequest(opts)).then((r) => cb(null, map.allDocsResponse(r)), cb);
    };
    api._bulkDocs = (req, opts, cb) => {
      (async () => {
        const docs = await Promise.all(req.docs.map(attachmentsToBase64));
        const r = await call(map.bulkDocsRequest(docs, opts));
        return r.results.map(map.bulkDocsRow);
      })().then((r) => cb(null, r), cb);
    };
    api.revsDiff = method(async function (req) {
      return map.revsDiffResponse(await call(map.revsDiffRequest(req)));
    });
    api.bulkGet = method(async function (opts = {}) {
      const res = map.bulkGetResponse(await call(map.bulkGetRequest(opts)));
      if (opts.attachments && opts.binary) for (const r of res.results) for (const d of r.docs) d.ok && attachmentsToBinary(d.ok);
      return res;
    });
    api.getAttachment = method(async function (id, name, opts = {}) {
      const att = await call(map.attachmentRequest(id, name, opts));
      return toBinary(att.data, att.content_type);
    });
    api._changes = (opts) => changes(opts);
    api._close = (cb) => {
      const l = link;
      link = null;
      if (l) l.then((c) => c.close('closed by the app'), () => {});
      cb();
    };
    // A share is someone else's database: destroy() only closes the link.
    api._destroy = (opts, cb) => api._close(() => cb(null, { ok: true }));

    function changes(opts) {
      let cancelled = false;
      let sub = null;
      const results = [];
      const deliver = (row, lastSeq) => {
        if (!map.passesFilter(opts, row)) return false;
        if (opts.include_docs && opts.attachments && opts.binary && row.doc) attachmentsToBinary(row.doc);
        if (opts.return_docs !== false) results.push(row);
        opts.onChange(row, null, lastSeq);
        return true;
      };
      (async () => {
        const c = await client();
        let since = opts.since ?? 0;
        if (since === 'now') since = (await c.call({ op: 'info' })).update_seq;
        let left = typeof opts.limit === 'number' ? opts.limit : undefined;
        if (!opts.continuous) {
          for (;;) {
            const n = map.changesLimit(opts, left);
            const page = await c.call(map.changesRequest(opts, since, n));
            if (cancelled) return;
            for (const row of page.results) if (deliver(row, page.last_seq) && left !== undefined) left--;
            since = page.last_seq;
            if (opts.descending || page.results.length < n || (left !== undefined && left <= 0)) break;
          }
          opts.complete(null, { results, last_seq: since });
          return;
        }
        sub = c.subscribe(map.subscribeRequest(opts, since), (batch) => {
          if (cancelled) return;
          for (const row of batch.results) {
            since = row.seq;
            if (deliver(row, batch.last_seq) && left !== undefined && --left <= 0) {
              cancelled = true;
              sub.cancel();
              opts.complete(null, { results, last_seq: since });
              return;
            }
          }
        });
        await sub.done;
      })().catch((e) => {
        if (!cancelled) opts.complete(map.toPouchError(e));
      });
      return {
        cancel() {
          cancelled = true;
          sub?.cancel();
        },
      };
    }

    setTimeout(() => callback(null, api), 0);
  }
  PeerAdapter.valid = () => true;
  PeerAdapter.use_prefix = false;
  PouchDB.adapter('peerpouch', PeerAdapter, false);

  async function shareIdByName(hubDb, name) {
    const now = Date.now();
    const r = await hubDb.allDocs({ include_docs: true, startkey: 'share-', endkey: 'share-\uffff' });
    // The newest of that name: a sharer that restarted (a new share id) beside its old,
    // not yet expired document.
    const docs = r.rows.map((x) => x.doc).filter((d) => d?.type === SHARE_TYPE && d.name === name && live(d, now));
    if (!docs.length) throw new map.PouchError(404, 'not_found', `no share named ${name} on the hub`);
    docs.sort((a, b) => (b.expires_at ?? 0) - (a.expires_at ?? 0));
    return docs[0]._id;
  }

  function shareOf(hub, doc) {
    const s = { id: doc._id, name: doc.name ?? null, info: doc.info ?? null, dbname: `${PREFIX}${hub.name}#${doc._id}` };
    if (doc.read_only) s.readOnly = true;
    if (doc.fingerprint) s.fingerprint = doc.fingerprint;
    if (typeof doc.expires_at === 'number') s.expires_at = doc.expires_at;
    return s;
  }

  /**
   * Shares `db` on this hub until `unshareDatabase(db)` (or the handle's `unshare()`).
   * opts: {name, info, readOnly, key, iceServers, onRemote(evt), log}. Resolves with the handle
   * `{id, name, dbname, unshare()}`.
   */
  PouchDB.prototype.shareDatabase = method(async function (db, opts = {}) {
    if (ownShares.has(db)) throw new map.PouchError(409, 'conflict', 'this database is already shared');
    const hub = this;
    let uuid;
    try {
      uuid = await db.id();
    } catch {
      uuid = undefined;
    }
    const s = await shareOnHub(new PouchHub(hub), new ServedPouch(db, uuid), {
      name: opts.name ?? db.name,
      info: opts.info ?? null,
      readOnly: !!opts.readOnly,
      key: keyBytes(opts.key),
      iceServers: opts.iceServers ?? [],
      iceTransportPolicy: opts.iceTransportPolicy,
      onRemote: opts.onRemote,
      log: opts.log ?? (() => {}),
      onLinkClosed: opts.onLinkClosed,
    });
    ownIds.add(s.share);
    const handle = {
      id: s.share,
      name: opts.name ?? db.name,
      dbname: `${PREFIX}${hub.name}#${s.share}`,
      links: s.links,
      unshare: async () => {
        ownShares.delete(db);
        await s.unshare();
      },
    };
    ownShares.set(db, handle);
    return handle;
  });

  /** Stops sharing `db`: its share document is deleted and its links close. */
  PouchDB.prototype.unshareDatabase = method(async function (db) {
    const h = ownShares.get(db);
    if (!h) throw new map.PouchError(404, 'not_found', 'this database is not shared');
    await h.unshare();
    return { ok: true };
  });

  /**
   * The live shares on this hub that are not this page's own, each `{id, name, info, dbname}`.
   * With `onChange(share)`, shares added (and `{id, _deleted: true}` for removed ones) are
   * reported as the hub changes, until `.cancel()` on the returned list.
   */
  PouchDB.prototype.getSharedDatabases = method(async function (opts = {}) {
    const hub = this;
    const since = opts.onChange ? (await hub.info()).update_seq : undefined;
    const now = Date.now();
    const r = await hub.allDocs({ include_docs: true, startkey: 'share-', endkey: 'share-\uffff' });
    const shares = r.rows
      .map((x) => x.doc)
      .filter((d) => d && d.type === SHARE_TYPE && !ownIds.has(d._id) && live(d, now))
      .map((d) => shareOf(hub, d));
    if (opts.onChange) {
      const feed = new PouchHub(hub).follow(
        since,
        (d) => {
          if (d.type === SHARE_TYPE && isShareId(d._id) && !ownIds.has(d._id) && live(d, Date.now())) opts.onChange(shareOf(hub, d));
        },
        () => {},
        (id) => {
          if (isShareId(id) && !ownIds.has(id)) opts.onChange({ id, _deleted: true });
        },
      );
      Object.defineProperty(shares, 'cancel', { value: () => feed.stop() });
    }
    return shares;
  });
}
