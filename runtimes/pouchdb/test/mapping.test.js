// The adapter's mapping of PouchDB's options onto peerpouch's calls (docs/protocol.md §2.2), and
// of the answers back; the share's name; the binary forms of attachments.
import assert from 'node:assert/strict';
import test from 'node:test';
import * as map from '../src/mapping.js';
import { parseDbName } from '../src/plugin.js';
import { attachmentsToBase64, attachmentsToBinary, base64ToBytes, bytesToBase64 } from '../src/binary.js';

test('get: options, open_revs and _local documents', () => {
  assert.deepEqual(map.getRequest('a'), { op: 'get', id: 'a' });
  assert.deepEqual(map.getRequest('a', { revs: true, conflicts: true, rev: '2-x', attachments: true, binary: true, latest: false }), {
    op: 'get',
    id: 'a',
    rev: '2-x',
    revs: true,
    conflicts: true,
    attachments: true,
  });
  assert.deepEqual(map.getRequest('a', { open_revs: 'all', revs: true }), { op: 'open_revs', id: 'a', open_revs: 'all', revs: true });
  assert.deepEqual(map.getRequest('a', { open_revs: ['1-a', '2-b'], latest: true }), {
    op: 'open_revs',
    id: 'a',
    open_revs: ['1-a', '2-b'],
    latest: true,
  });
  assert.deepEqual(map.getRequest('_local/x', { revs: true }), { op: 'get_local', id: '_local/x' });
  assert.deepEqual(map.getResponse({ result: 'doc', doc: { _id: 'a' } }), { _id: 'a' });
  const revs = [{ ok: { _id: 'a', _rev: '1-a' } }, { missing: '2-b' }];
  assert.deepEqual(map.getResponse({ result: 'open_revs', revs }), revs);
  const withData = { _id: 'a', _attachments: { f: { content_type: 't', data: 'aGk=', length: 2, digest: 'md5-x', revpos: 1 }, s: { stub: true, length: 3 } } };
  assert.deepEqual(map.getResponse({ result: 'doc', doc: withData })._attachments, {
    f: { content_type: 't', data: 'aGk=', digest: 'md5-x', revpos: 1 },
    s: { stub: true, length: 3 },
  });
});

test('allDocs: both spellings of the keys, key, keys, paging', () => {
  assert.deepEqual(map.allDocsRequest({}), { op: 'all_docs' });
  assert.deepEqual(map.allDocsRequest({ startkey: 'a', endkey: 'b', inclusive_end: false, limit: 3, skip: 2, descending: true, include_docs: true }), {
    op: 'all_docs',
    start_key: 'a',
    end_key: 'b',
    inclusive_end: false,
    limit: 3,
    skip: 2,
    descending: true,
    include_docs: true,
  });
  assert.deepEqual(map.allDocsRequest({ start_key: 'a', end_key: 'b', inclusive_end: true, skip: 0 }), { op: 'all_docs', start_key: 'a', end_key: 'b' });
  assert.deepEqual(map.allDocsRequest({ key: 'k' }), { op: 'all_docs', start_key: 'k', end_key: 'k' });
  assert.deepEqual(map.allDocsRequest({ keys: ['x', 'y'], conflicts: true }), { op: 'all_docs', keys: ['x', 'y'], conflicts: true });
  assert.deepEqual(map.allDocsResponse({ result: 'all_docs', total_rows: 1, offset: 0, rows: [] }), { total_rows: 1, offset: 0, rows: [] });
});

test('changes: paging, style, doc_ids, a filter function asks for documents', () => {
  assert.deepEqual(map.changesRequest({ since: 5, style: 'all_docs' }, 5, 100), { op: 'changes', since: 5, limit: 100, style: 'all_docs' });
  assert.deepEqual(map.changesRequest({ doc_ids: ['a'], include_docs: true, conflicts: true, descending: true }, 0, 10), {
    op: 'changes',
    since: 0,
    limit: 10,
    include_docs: true,
    doc_ids: ['a'],
    descending: true,
    conflicts: true,
  });
  assert.equal(map.changesRequest({ filter: () => true }, 0).include_docs, true);
  assert.equal(map.changesLimit({}, undefined), 100);
  assert.equal(map.changesLimit({ batch_size: 25 }, 7), 7);
  assert.equal(map.changesLimit({ batch_size: 25 }, 70), 25);
  assert.deepEqual(map.subscribeRequest({ style: 'all_docs', include_docs: true }, 12), { since: 12, style: 'all_docs', include_docs: true });
  const opts = { filter: (doc, req) => doc.keep && req.query.x === 1, query_params: { x: 1 } };
  assert.equal(map.passesFilter(opts, { doc: { keep: true } }), true);
  assert.equal(map.passesFilter(opts, { doc: { keep: false } }), false);
  assert.equal(map.passesFilter({}, {}), true);
});

test('writes, revs_diff, bulk_get, attachments, _local documents', () => {
  assert.deepEqual(map.bulkDocsRequest([{ _id: 'a' }], { new_edits: true }), { op: 'bulk_docs', docs: [{ _id: 'a' }] });
  assert.deepEqual(map.bulkDocsRequest([], { new_edits: false }), { op: 'bulk_docs', docs: [], new_edits: false });
  assert.deepEqual(map.bulkDocsRow({ ok: true, id: 'a', rev: '1-a' }), { ok: true, id: 'a', rev: '1-a' });
  assert.deepEqual(map.bulkDocsRow({ id: 'a', error: 'conflict', reason: 'Document update conflict', status: 409 }), {
    id: 'a',
    error: 'conflict',
    reason: 'Document update conflict',
    status: 409,
    name: 'conflict',
    message: 'Document update conflict',
  });
  assert.deepEqual(map.revsDiffRequest({ a: ['1-a'] }), { op: 'revs_diff', revs: { a: ['1-a'] } });
  assert.deepEqual(map.revsDiffResponse({ result: 'revs_diff', missing: { a: { missing: ['1-a'] } } }), { a: { missing: ['1-a'] } });
  assert.deepEqual(map.bulkGetRequest({ docs: [{ id: 'a', rev: '1-a', extra: 1 }, { id: 'b' }], revs: true, latest: true, binary: true }), {
    op: 'bulk_get',
    docs: [{ id: 'a', rev: '1-a' }, { id: 'b' }],
    revs: true,
    latest: true,
  });
  assert.deepEqual(map.attachmentRequest('a', 'f.txt', { rev: '1-a' }), { op: 'get_attachment', id: 'a', name: 'f.txt', rev: '1-a' });
  assert.deepEqual(map.putLocalRequest({ _id: '_local/c', last_seq: 3 }), { op: 'put_local', id: '_local/c', doc: { _id: '_local/c', last_seq: 3 } });
  assert.deepEqual(map.deleteLocalRequest({ _id: '_local/c', _rev: '0-1' }), { op: 'delete_local', id: '_local/c', rev: '0-1' });
  assert.deepEqual(map.writtenResponse({ result: 'written', ok: true, id: '_local/c', rev: '0-2' }), { ok: true, id: '_local/c', rev: '0-2' });
});

test("errors take PouchDB's shape, both ways", () => {
  const e = map.toPouchError({ status: 403, error: 'forbidden', reason: 'this share is read-only' });
  assert.ok(e instanceof Error);
  assert.deepEqual({ status: e.status, name: e.name, message: e.message, error: e.error, reason: e.reason }, {
    status: 403,
    name: 'forbidden',
    message: 'this share is read-only',
    error: true,
    reason: 'this share is read-only',
  });
  assert.equal(map.toPouchError(e), e);
  assert.deepEqual(map.fromPouchError({ status: 404, name: 'not_found', message: 'missing', error: true }), { status: 404, error: 'not_found', reason: 'missing' });
  assert.deepEqual(map.fromPouchError(new TypeError('x')), { status: 500, error: 'TypeError', reason: 'x' });
  assert.deepEqual(map.fromPouchBulkRow({ status: 409, name: 'conflict', message: 'Document update conflict', error: true, id: 'a' }), {
    id: 'a',
    error: 'conflict',
    reason: 'Document update conflict',
    status: 409,
  });
});

test("a PouchDB call's options, from a peer's call", () => {
  assert.deepEqual(map.pouchAllDocsOptions({ op: 'all_docs', start_key: 'a', end_key: 'b', inclusive_end: false, limit: 2, skip: 1, include_docs: true }), {
    startkey: 'a',
    endkey: 'b',
    inclusive_end: false,
    limit: 2,
    skip: 1,
    include_docs: true,
  });
  assert.deepEqual(map.pouchChangesOptions({ op: 'changes', since: 3, limit: 10, style: 'all_docs', include_docs: true }), {
    since: 3,
    return_docs: true,
    limit: 10,
    style: 'all_docs',
    include_docs: true,
  });
  assert.deepEqual(map.pouchChangesOptions({ op: 'changes', style: 'main_only' }), { since: 0, return_docs: true });
});

test('share names: peer+HUB#SHARE', () => {
  assert.deepEqual(parseDbName('peer+http://127.0.0.1:5984/hub#share-abc'), { hub: 'http://127.0.0.1:5984/hub', share: 'share-abc' });
  assert.deepEqual(parseDbName('peer+hub#my%20notes'), { hub: 'hub', share: 'my notes' });
  for (const bad of ['http://x/hub#s', 'peer+http://x/hub', 'peer+#s', 'peer+http://x/hub#']) {
    assert.throws(() => parseDbName(bad), (e) => e.status === 400, bad);
  }
});

test('attachments: base64 and binary forms', async () => {
  const bytes = Uint8Array.from({ length: 100000 }, (_, i) => (i * 7) & 255);
  const b64 = bytesToBase64(bytes);
  assert.equal(b64, Buffer.from(bytes).toString('base64'));
  assert.deepEqual(base64ToBytes(b64), bytes);
  const doc = { _id: 'a', _attachments: { 'x.bin': { content_type: 'application/octet-stream', data: Buffer.from(bytes) }, 's.txt': { stub: true, digest: 'md5-x' } } };
  await attachmentsToBase64(doc);
  assert.equal(doc._attachments['x.bin'].data, b64);
  assert.equal(doc._attachments['s.txt'].data, undefined);
  attachmentsToBinary(doc);
  assert.ok(Buffer.isBuffer(doc._attachments['x.bin'].data));
  assert.deepEqual(new Uint8Array(doc._attachments['x.bin'].data), bytes);
});
