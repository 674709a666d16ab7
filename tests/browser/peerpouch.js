// Test scaffolding for the browser interop test: a toy read-only in-page database (PageDb) served
// through the package's protocol module, and the protocol re-exported for scenarios.js and
// the older scenarios. The package itself is runtimes/pouchdb/.
import { RpcError, md5, toHex } from '../../runtimes/pouchdb/src/protocol.js';
export * from '../../runtimes/pouchdb/src/protocol.js';

const enc = new TextEncoder();

// ---------------------------------------------------------------------------------------------
// The server: share an in-page set of documents.

/** A read-only database in the page: documents by id, attachments as bytes. */
export class PageDb {
  constructor(name) {
    this.name = name;
    this.docs = new Map(); // id -> {doc, attachments: Map(name -> {content_type, digest, data})}
    this.seq = 0;
  }

  /** Adds a document (first revision) with optional attachments `{name: {content_type, data}}`. */
  async add(body, attachments = {}) {
    const atts = new Map();
    const stubs = {};
    for (const [name, a] of Object.entries(attachments)) {
      const digest = 'md5-' + btoa(String.fromCharCode(...md5(a.data)));
      atts.set(name, { content_type: a.content_type, digest, data: a.data });
      stubs[name] = { content_type: a.content_type, digest, length: a.data.length, revpos: 1, stub: true };
    }
    const rev = '1-' + toHex(md5(enc.encode(JSON.stringify([body, Object.keys(stubs)]))));
    const doc = { ...body, _rev: rev };
    if (atts.size) doc._attachments = stubs;
    this.docs.set(body._id, { doc, atts, seq: ++this.seq });
    return rev;
  }

  execute(req) {
    const notFound = () => Promise.reject(new RpcError(404, 'not_found', 'missing'));
    switch (req.op) {
      case 'info':
        return Promise.resolve({ result: 'info', db_name: this.name, doc_count: this.docs.size, doc_del_count: 0, update_seq: this.seq });
      case 'get': {
        const d = this.docs.get(req.id);
        if (!d || (req.rev && req.rev !== d.doc._rev)) return notFound();
        return Promise.resolve({ result: 'doc', doc: d.doc });
      }
      case 'all_docs': {
        let ids = [...this.docs.keys()].sort();
        if (req.keys) ids = req.keys;
        if (req.descending) ids.reverse();
        if (req.start_key != null) ids = ids.filter((i) => (req.descending ? i <= req.start_key : i >= req.start_key));
        if (req.end_key != null) {
          const incl = req.inclusive_end ?? true;
          ids = ids.filter((i) => (req.descending ? (incl ? i >= req.end_key : i > req.end_key) : incl ? i <= req.end_key : i < req.end_key));
        }
        ids = ids.slice(req.skip ?? 0, req.limit != null ? (req.skip ?? 0) + req.limit : undefined);
        const rows = ids.map((id) => {
          const d = this.docs.get(id);
          if (!d) return { key: id, error: 'not_found' };
          const row = { key: id, id, value: { rev: d.doc._rev } };
          if (req.include_docs) row.doc = d.doc;
          return row;
        });
        return Promise.resolve({ result: 'all_docs', total_rows: this.docs.size, offset: req.skip ?? 0, rows });
      }
      case 'get_attachment': {
        const a = this.docs.get(req.id)?.atts.get(req.name);
        if (!a) return notFound();
        return Promise.resolve({ result: 'attachment', content_type: a.content_type, digest: a.digest, data: a.data });
      }
      case 'destroy':
        return Promise.reject(new RpcError(403, 'forbidden', 'peers may not destroy a shared database'));
      default:
        return Promise.reject(new RpcError(501, 'not_implemented', `this page serves info, get, all_docs and get_attachment, not ${String(req.op).slice(0, 40)}`));
    }
  }
}
