// PouchDB's options and answers, mapped onto peerpouch's calls (docs/protocol.md §2.2) and back.
// Pure functions: no PouchDB, no link, no browser; the unit tests run them in Node.js.

/**
 * A PouchDB-shaped error, as PouchDB's HTTP adapter makes them from a CouchDB answer:
 * `status`, `name` (CouchDB's `error` word), `message` (its `reason`), `error: true`, `reason`.
 */
export class PouchError extends Error {
  /**
   * @param {number} status
   * @param {string} name
   * @param {string} reason
   */
  constructor(status, name, reason) {
    super(reason);
    this.status = status;
    this.name = name;
    this.error = true;
    this.reason = reason;
  }
}

/** A call's failure (an RpcError or any `{status, error, reason}`) as a PouchError. */
export function toPouchError(e) {
  if (e instanceof PouchError) return e;
  const status = typeof e?.status === 'number' ? e.status : 500;
  const name = typeof e?.error === 'string' ? e.error : typeof e?.name === 'string' ? e.name : 'unknown_error';
  const reason = typeof e?.reason === 'string' ? e.reason : String(e?.message ?? e);
  return new PouchError(status, name, reason);
}

const LOCAL = '_local/';

/** Whether a document id names a `_local` document. */
export function isLocalId(id) {
  return typeof id === 'string' && id.startsWith(LOCAL);
}

/** Copies the keys of `from` that are set (not undefined, null or false) into `to`. */
function setIf(to, from, keys) {
  for (const k of keys) if (from[k] !== undefined && from[k] !== null && from[k] !== false) to[k] = from[k];
  return to;
}

/**
 * `db.get(id, opts)` as a call: `get_local` for `_local/` ids, `open_revs` when
 * `opts.open_revs` is given (`'all'` or a list), `get` otherwise.
 */
export function getRequest(id, opts = {}) {
  if (isLocalId(id)) return { op: 'get_local', id };
  if (opts.open_revs) {
    const req = { op: 'open_revs', id, open_revs: opts.open_revs };
    return setIf(req, opts, ['revs', 'attachments', 'latest', 'atts_since']);
  }
  return setIf({ op: 'get', id }, opts, ['rev', 'revs', 'conflicts', 'deleted_conflicts', 'attachments', 'atts_since', 'latest']);
}

/**
 * The answer to {@link getRequest} as `db.get` gives it: a document, or the `open_revs` list.
 * Inlined attachments lose `length` and `stub`, as PouchDB's HTTP adapter gives them.
 */
export function getResponse(res) {
  if (res?.result === 'open_revs') {
    for (const r of res.revs) if (r.ok) inlined(r.ok);
    return res.revs;
  }
  return inlined(res?.doc);
}

/** Drops `length` and `stub` from attachments whose data is inline. */
export function inlined(doc) {
  for (const att of Object.values(doc?._attachments ?? {})) {
    if (att && att.data !== undefined) {
      delete att.length;
      delete att.stub;
    }
  }
  return doc;
}

/**
 * `db.allDocs(opts)` as an `all_docs` call. PouchDB's spellings (`startkey`/`start_key`,
 * `endkey`/`end_key`, `key`) become peerpouch's; `keys` is passed as it is.
 */
export function allDocsRequest(opts = {}) {
  const req = { op: 'all_docs' };
  const start = opts.startkey ?? opts.start_key;
  const end = opts.endkey ?? opts.end_key;
  if (opts.keys !== undefined) req.keys = opts.keys;
  if (opts.key !== undefined) {
    // `key` is a range of one (deleted documents are not listed), not `keys: [key]`.
    req.start_key = opts.key;
    req.end_key = opts.key;
  } else {
    if (start !== undefined) req.start_key = start;
    if (end !== undefined) req.end_key = end;
  }
  if (opts.inclusive_end === false) req.inclusive_end = false;
  if (typeof opts.limit === 'number') req.limit = opts.limit;
  if (typeof opts.skip === 'number' && opts.skip > 0) req.skip = opts.skip;
  return setIf(req, opts, ['descending', 'include_docs', 'conflicts']);
}

/** An `all_docs` answer as `db.allDocs` gives it (`{total_rows, offset, rows}`). */
export function allDocsResponse(res) {
  const { result: _r, ...rest } = res;
  return rest;
}

/**
 * One page of `db.changes(opts)` as a `changes` call from `since`, at most `limit` rows
 * (PouchDB's `limit` and `batch_size` decide it; see {@link changesLimit}).
 */
export function changesRequest(opts = {}, since = opts.since ?? 0, limit) {
  const req = { op: 'changes', since: since === 'now' ? 0 : since };
  if (typeof limit === 'number') req.limit = limit;
  if (opts.include_docs || typeof opts.filter === 'function') req.include_docs = true;
  if (opts.style === 'all_docs') req.style = 'all_docs';
  if (Array.isArray(opts.doc_ids)) req.doc_ids = opts.doc_ids;
  return setIf(req, opts, ['descending', 'conflicts']);
}

/** How many rows the next page asks for: the batch size, or fewer when `limit` is near. */
export function changesLimit(opts, leftToFetch) {
  const batch = typeof opts.batch_size === 'number' && opts.batch_size > 0 ? opts.batch_size : 100;
  if (typeof leftToFetch === 'number') return Math.min(batch, leftToFetch);
  return batch;
}

/** A live subscription's request: like {@link changesRequest}, without paging. */
export function subscribeRequest(opts = {}, since = opts.since ?? 0) {
  const req = changesRequest(opts, since);
  delete req.op;
  return req;
}

/** Whether a changes row passes PouchDB's `filter` function (with `query_params`). */
export function passesFilter(opts, row) {
  if (typeof opts.filter !== 'function') return true;
  return !!opts.filter(row.doc, { query: opts.query_params ?? {} });
}

/** `db.bulkDocs(docs, {new_edits})` as a `bulk_docs` call; attachments must already be base64. */
export function bulkDocsRequest(docs, opts = {}) {
  const req = { op: 'bulk_docs', docs };
  if (opts.new_edits === false) req.new_edits = false;
  return req;
}

/** `db.revsDiff(req)` as a `revs_diff` call, and its answer (`{id: {missing, possible_ancestors}}`). */
export function revsDiffRequest(revs) {
  return { op: 'revs_diff', revs };
}
export function revsDiffResponse(res) {
  return res.missing ?? {};
}

/** `db.bulkGet(opts)` as a `bulk_get` call. */
export function bulkGetRequest(opts = {}) {
  const docs = (opts.docs ?? []).map((d) => setIf({ id: d.id }, d, ['rev', 'atts_since']));
  return setIf({ op: 'bulk_get', docs }, opts, ['revs', 'attachments', 'latest']);
}
export function bulkGetResponse(res) {
  for (const r of res.results) for (const d of r.docs) if (d.ok) inlined(d.ok);
  return { results: res.results };
}

/** `db.getAttachment(id, name, {rev})` as a `get_attachment` call. */
export function attachmentRequest(id, name, opts = {}) {
  return setIf({ op: 'get_attachment', id, name }, opts, ['rev']);
}

/** `db.put` of a `_local` document, and `db.remove` of one. */
export function putLocalRequest(doc) {
  return { op: 'put_local', id: doc._id, doc };
}
export function deleteLocalRequest(doc) {
  const req = { op: 'delete_local', id: doc._id };
  if (doc._rev) req.rev = doc._rev;
  return req;
}

/** A `put_local`/`delete_local` answer as `db.put` gives it (`{ok, id, rev}`). */
export function writtenResponse(res) {
  const { result: _r, status: _s, ...rest } = res;
  if (rest.error) throw toPouchError({ status: res.status ?? 500, error: rest.error, reason: rest.reason });
  return rest;
}

/** An `info` answer as `db.info` gives it. */
export function infoResponse(res) {
  const { result: _r, ...rest } = res;
  return rest;
}

/**
 * A `bulk_docs` answer row as PouchDB gives it: `{ok, id, rev}`, or CouchDB's error row
 * `{id, error, reason}` with PouchDB's `status`, `name` and `message` beside.
 */
export function bulkDocsRow(row) {
  if (!row.error) return row;
  return { ...row, status: row.status ?? 500, name: row.error, message: row.reason ?? '' };
}

// ---------------------------------------------------------------------------------------------
// The other direction: a PouchDB database serving peerpouch's calls.

/** A PouchDB error (or anything thrown) as the `{status, error, reason}` a call fails with. */
export function fromPouchError(e) {
  const status = typeof e?.status === 'number' ? e.status : 500;
  const error = typeof e?.name === 'string' && e.name !== 'Error' ? e.name : typeof e?.error === 'string' ? e.error : 'error';
  const reason = typeof e?.reason === 'string' ? e.reason : String(e?.message ?? e);
  return { status, error, reason };
}

/** A call's `all_docs` options as PouchDB's `allDocs` takes them. */
export function pouchAllDocsOptions(req) {
  const o = {};
  if (req.keys) o.keys = req.keys;
  if (req.start_key !== undefined) o.startkey = req.start_key;
  if (req.end_key !== undefined) o.endkey = req.end_key;
  if (req.inclusive_end === false) o.inclusive_end = false;
  if (typeof req.limit === 'number') o.limit = req.limit;
  if (req.skip) o.skip = req.skip;
  return setIf(o, req, ['descending', 'include_docs', 'conflicts']);
}

/** A call's `changes` options as PouchDB's `changes` takes them (one-shot). */
export function pouchChangesOptions(req) {
  const o = { since: req.since ?? 0, return_docs: true };
  if (typeof req.limit === 'number') o.limit = req.limit;
  if (req.style === 'all_docs') o.style = 'all_docs';
  if (Array.isArray(req.doc_ids)) o.doc_ids = req.doc_ids;
  return setIf(o, req, ['include_docs', 'descending', 'conflicts']);
}

/** A PouchDB `bulkDocs` result row as peerpouch's (`{ok, id, rev}` or `{id, error, reason, status}`). */
export function fromPouchBulkRow(row) {
  if (!row.error) return { ok: true, id: row.id, rev: row.rev };
  const e = fromPouchError(row);
  return { id: row.id ?? '', error: typeof row.error === 'string' ? row.error : e.error, reason: e.reason, status: e.status };
}

/** A PouchDB `bulkGet` result as peerpouch's: errors as `{id, rev, error, reason}`. */
export function fromPouchBulkGet(res) {
  return {
    results: res.results.map((r) => ({
      id: r.id,
      docs: r.docs.map((d) => {
        if (d.ok) return { ok: d.ok };
        const e = d.error ?? {};
        const err = { id: e.id ?? r.id, error: typeof e.error === 'string' ? e.error : fromPouchError(e).error, reason: e.reason ?? e.message ?? '' };
        if (e.rev) err.rev = e.rev;
        return { error: err };
      }),
    })),
  };
}
