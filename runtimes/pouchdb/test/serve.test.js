// A PouchDB database serving peerpouch's calls (what a browser share answers a Rust node with),
// checked against PouchDB's memory adapter in Node.js: every operation the protocol lists, in
// the JSON shapes the Rust side decodes (src/ops.rs).
import assert from 'node:assert/strict';
import test from 'node:test';
import PouchDB from 'pouchdb-core';
import memory from 'pouchdb-adapter-memory';
import { ServedPouch } from '../src/plugin.js';
import { RpcError } from '../src/protocol.js';

PouchDB.plugin(memory);
let n = 0;
const fresh = () => new PouchDB(`serve-test-${n++}`, { adapter: 'memory' });

test('reads: info, get, open_revs, all_docs, changes, revs_diff, bulk_get, attachments', async () => {
  const db = fresh();
  const a = await db.put({ _id: 'a', v: 1, _attachments: { 'n.txt': { content_type: 'text/plain', data: Buffer.from('hello').toString('base64') } } });
  await db.put({ _id: 'b', v: 2 });
  // A conflict on b, as a replication brings it.
  await db.bulkDocs([{ _id: 'b', v: 3, _rev: '1-zzz', _revisions: { start: 1, ids: ['zzz'] } }], { new_edits: false });
  const s = new ServedPouch(db, 'uuid-1');

  const info = await s.execute({ op: 'info' });
  assert.equal(info.result, 'info');
  assert.equal(info.doc_count, 2);
  assert.equal(info.doc_del_count, 0);
  assert.equal(info.db_uuid, 'uuid-1');
  assert.equal(info.update_seq, 3);

  const got = await s.execute({ op: 'get', id: 'b', conflicts: true, revs: true });
  assert.equal(got.result, 'doc');
  assert.equal(got.doc._conflicts.length, 1);
  assert.equal(got.doc._revisions.start, 1);

  const leaves = await s.execute({ op: 'open_revs', id: 'b', open_revs: 'all' });
  assert.equal(leaves.result, 'open_revs');
  assert.equal(leaves.revs.length, 2);
  assert.ok(leaves.revs.every((r) => r.ok));

  const all = await s.execute({ op: 'all_docs', include_docs: true, limit: 1, start_key: 'b' });
  assert.deepEqual(
    all.rows.map((r) => r.id),
    ['b'],
  );
  assert.equal(all.result, 'all_docs');
  assert.equal(all.total_rows, 2);

  const ch = await s.execute({ op: 'changes', since: 0, style: 'all_docs' });
  assert.equal(ch.result, 'changes');
  assert.deepEqual(
    ch.results.map((r) => [r.id, r.changes.length]),
    [
      ['a', 1],
      ['b', 2],
    ],
  );
  assert.equal(ch.last_seq, 3);

  const diff = await s.execute({ op: 'revs_diff', revs: { a: [a.rev, '9-nope'], c: ['1-c'] } });
  assert.deepEqual(diff, { result: 'revs_diff', missing: { a: { missing: ['9-nope'] }, c: { missing: ['1-c'] } } });

  const bg = await s.execute({ op: 'bulk_get', docs: [{ id: 'a', rev: a.rev }, { id: 'nope', rev: '1-x' }], revs: true });
  assert.equal(bg.result, 'bulk_get');
  assert.equal(bg.results[0].docs[0].ok._id, 'a');
  const e = bg.results[1].docs[0].error;
  assert.equal(e.id, 'nope');
  assert.equal(typeof e.error, 'string');

  const att = await s.execute({ op: 'get_attachment', id: 'a', name: 'n.txt' });
  assert.equal(att.result, 'attachment');
  assert.equal(att.content_type, 'text/plain');
  assert.equal(Buffer.from(att.data).toString(), 'hello');
  assert.match(att.digest, /^md5-/);

  await assert.rejects(s.execute({ op: 'get', id: 'nope' }), (err) => err instanceof RpcError && err.status === 404 && err.error === 'not_found');
  await assert.rejects(s.execute({ op: 'get_attachment', id: 'b', name: 'x' }), (err) => err.status === 404);
  await assert.rejects(s.execute({ op: 'frobnicate' }), (err) => err.status === 501);
});

test('writes: bulk_docs (new_edits false too) and _local documents', async () => {
  const db = fresh();
  const s = new ServedPouch(db);
  const w = await s.execute({ op: 'bulk_docs', docs: [{ _id: 'x', v: 1 }] });
  assert.equal(w.result, 'bulk_docs');
  assert.equal(w.results[0].ok, true);
  const conflict = await s.execute({ op: 'bulk_docs', docs: [{ _id: 'x', v: 2 }] });
  assert.deepEqual(
    { ...conflict.results[0], reason: undefined },
    { id: 'x', error: 'conflict', status: 409, reason: undefined },
  );
  const repl = await s.execute({
    op: 'bulk_docs',
    new_edits: false,
    docs: [{ _id: 'y', _rev: '2-b', v: 9, _revisions: { start: 2, ids: ['b', 'a'] } }],
  });
  assert.equal(repl.result, 'bulk_docs');
  assert.deepEqual((await db.get('y', { revs: true }))._revisions, { start: 2, ids: ['b', 'a'] });

  const put = await s.execute({ op: 'put_local', id: 'ckpt', doc: { last_seq: 4 } });
  assert.deepEqual({ ...put, rev: undefined }, { result: 'written', ok: true, id: '_local/ckpt', rev: undefined });
  const local = await s.execute({ op: 'get_local', id: '_local/ckpt' });
  assert.equal(local.doc.last_seq, 4);
  const del = await s.execute({ op: 'delete_local', id: '_local/ckpt', rev: put.rev });
  assert.equal(del.ok, true);
  await assert.rejects(s.execute({ op: 'get_local', id: 'ckpt' }), (err) => err.status === 404);
});

test('changes: a longpoll waits for the next change; a subscription delivers batches and stops', async () => {
  const db = fresh();
  const s = new ServedPouch(db);
  await db.put({ _id: 'first' });
  const waiting = s.execute({ op: 'changes', since: 1, feed: 'longpoll', timeout_ms: 10000 });
  await db.put({ _id: 'second' });
  const got = await waiting;
  assert.deepEqual(
    got.results.map((r) => r.id),
    ['second'],
  );

  const seen = [];
  let wake;
  const stop = s.subscribe(
    { since: 0, include_docs: true },
    (batch) => {
      assert.equal(batch.last_seq, batch.results[batch.results.length - 1].seq);
      seen.push(...batch.results.map((r) => r.id));
      if (seen.includes('third')) wake();
    },
    (err) => assert.fail(`ended: ${JSON.stringify(err)}`),
  );
  await db.put({ _id: 'third' });
  await new Promise((r) => (wake = r));
  stop();
  assert.deepEqual(seen, ['first', 'second', 'third']);
});
