// The plugin's wiring in Node.js, with a local (memory) hub: share documents as peerpouch nodes
// read them, the promise and callback forms, unsharing, and `peer+` names picking the adapter.
// No WebRTC here: nothing connects (the browser test does that).
import assert from 'node:assert/strict';
import test from 'node:test';
import PouchDB from 'pouchdb-core';
import memory from 'pouchdb-adapter-memory';
import PeerPouch from '../index.js';

PouchDB.plugin(memory);
PouchDB.plugin(PeerPouch);
PouchDB.plugin(PeerPouch); // twice is harmless
let n = 0;
const fresh = (what) => new PouchDB(`plugin-test-${what}-${n++}`, { adapter: 'memory' });

test('shareDatabase writes a share document; unshareDatabase deletes it', async () => {
  const hub = fresh('hub');
  const db = fresh('db');
  const before = Date.now();
  const share = await hub.shareDatabase(db, { name: 'notes', info: { owner: 'alice' }, readOnly: true, key: 'k' });
  assert.match(share.id, /^share-[0-9a-f]{32}$/);
  assert.equal(share.name, 'notes');
  assert.equal(share.dbname, `peer+${hub.name}#${share.id}`);
  const doc = await hub.get(share.id);
  assert.equal(doc.type, 'com.stemstorage.peerpouch.share');
  assert.equal(doc.name, 'notes');
  assert.deepEqual(doc.info, { owner: 'alice' });
  assert.equal(doc.read_only, true);
  assert.equal(doc.protocol, 1);
  assert.ok(doc.expires_at >= before + 30000 - 1000, 'expires 30 s ahead');
  assert.equal('key' in doc, false, 'the key is never written to the hub');
  // The page's own shares are not listed to it.
  assert.deepEqual(await hub.getSharedDatabases(), []);
  await assert.rejects(hub.shareDatabase(db, {}), (e) => e.status === 409);
  assert.deepEqual(await hub.unshareDatabase(db), { ok: true });
  await assert.rejects(hub.get(share.id), (e) => e.status === 404);
  await assert.rejects(hub.unshareDatabase(db), (e) => e.status === 404);
});

test('the callback forms', async () => {
  const hub = fresh('hub');
  const db = fresh('db');
  const share = await new Promise((resolve, reject) => hub.shareDatabase(db, { name: 'cb' }, (err, s) => (err ? reject(err) : resolve(s))));
  assert.equal(share.name, 'cb');
  const r = await new Promise((resolve, reject) => hub.unshareDatabase(db, (err, x) => (err ? reject(err) : resolve(x))));
  assert.deepEqual(r, { ok: true });
});

test("others' shares are listed with a dbname; expired ones are not; onChange sees them come and go", async () => {
  const hub = fresh('hub');
  const now = Date.now();
  await hub.bulkDocs([
    { _id: 'share-aaa', type: 'com.stemstorage.peerpouch.share', name: 'theirs', info: { x: 1 }, expires_at: now + 30000, fingerprint: 'sha-256 AB' },
    { _id: 'share-old', type: 'com.stemstorage.peerpouch.share', name: 'gone', expires_at: now - 1 },
    { _id: 'share-nox', type: 'com.stemstorage.peerpouch.share', name: 'original peerpouch' },
    { _id: 'p-signal-1', type: 'com.stemstorage.peerpouch.signal' },
  ]);
  const seen = [];
  let wake = () => {};
  const next = () => new Promise((r) => (wake = r));
  const listed = await hub.getSharedDatabases({
    onChange: (s) => {
      seen.push(s);
      wake();
    },
  });
  assert.deepEqual(
    listed.map((s) => [s.id, s.name, s.dbname]),
    [
      ['share-aaa', 'theirs', `peer+${hub.name}#share-aaa`],
      ['share-nox', 'original peerpouch', `peer+${hub.name}#share-nox`],
    ],
  );
  assert.equal(listed[0].fingerprint, 'sha-256 AB');
  let woke = next();
  const put = await hub.put({ _id: 'share-new', type: 'com.stemstorage.peerpouch.share', name: 'new' });
  await woke;
  woke = next();
  await hub.remove('share-new', put.rev);
  await woke;
  listed.cancel();
  assert.deepEqual(
    seen.map((s) => [s.id, s.name ?? null, !!s._deleted]),
    [
      ['share-new', 'new', false],
      ['share-new', null, true],
    ],
  );
});

test('peer+ names pick the peerpouch adapter; destroy() only closes', async () => {
  const remote = new PouchDB('peer+http://127.0.0.1:1/hub#share-abc', { key: 'k' });
  assert.equal(remote.adapter, 'peerpouch');
  assert.equal(remote.name, 'peer+http://127.0.0.1:1/hub#share-abc');
  assert.equal(remote.type(), 'peerpouch');
  assert.deepEqual(await remote.destroy(), { ok: true });
  const local = fresh('plain');
  assert.equal(local.adapter, 'memory');
  assert.throws(() => new PouchDB('peer+http://127.0.0.1:1/hub'), /peer\+HUB#SHARE/);
});
