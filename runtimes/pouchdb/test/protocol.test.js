// Checks of the protocol module that need no browser (Node.js 20 has WebCrypto): MD5 against
// node:crypto, framing and its typed errors, the access proof against an HMAC computed with
// node:crypto, signal ordering. `node --test test/` (npm test); tests/browser/run.sh runs them first.
import assert from 'node:assert/strict';
import test from 'node:test';
import { createHash, createHmac } from 'node:crypto';
import { Assembler, ProtocolError, SignalIn, makeProof, md5, splitFrames, toHex } from '../src/protocol.js';

const bytes = (n, k = 31) => Uint8Array.from({ length: n }, (_, i) => (i * k + 7) & 255);

test('md5 agrees with node:crypto', async () => {
  for (const n of [0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000, 100003]) {
    const b = bytes(n);
    assert.equal(toHex(md5(b)), createHash('md5').update(b).digest('hex'), `md5 of ${n} bytes`);
  }
});

test('frames split and reassemble, interleaved', async () => {
  // Frames: a message split at 1 KiB and one of another id interleaved come back whole.
  const big = bytes(10000);
  const frames = splitFrames(3, 7, big, 1024);
  assert.equal(frames.length, Math.ceil(10000 / (1024 - 6)));
  assert.ok(frames.every((f) => f.length > 0 && f.length <= 1024));
  assert.deepEqual([...splitFrames(6, 3, new Uint8Array(0), 1024)[0]], [6, 0, 0, 0, 0, 3]);
  const a = new Assembler(1 << 20, 1024);
  let done = null;
  for (const [i, f] of frames.entries()) {
    if (i === 3) assert.deepEqual([...a.push(splitFrames(2, 9, bytes(5), 1024)[0]).payload], [...bytes(5)]);
    done = a.push(f) ?? done;
  }
  assert.equal(done.kind, 3);
  assert.equal(done.id, 7);
  assert.deepEqual(done.payload, big);
});

test('bad frames are typed errors', async () => {
  // Bad frames are typed errors.
  const bad = [
    [new Assembler(100, 1024), [1, 0, 0]], // shorter than the header
    [new Assembler(100, 1024), [99, 0, 0, 0, 0, 1]], // unknown kind
    [new Assembler(100, 1024), [2, 2, 0, 0, 0, 1]], // unknown flag
    [new Assembler(10, 1024), [2, 1, 0, 0, 0, 1, ...bytes(11)]], // over the message limit
    [new Assembler(100, 8), [2, 0, 0, 0, 0, 1, 1, 2, 3]], // over the frame limit
  ];
  for (const [asm, f] of bad) assert.throws(() => asm.push(Uint8Array.from(f)), ProtocolError, `frame ${f}`);
  const mixed = new Assembler(100, 1024);
  mixed.push(Uint8Array.from([2, 1, 0, 0, 0, 1, 9]));
  assert.throws(() => mixed.push(Uint8Array.from([3, 0, 0, 0, 0, 1, 9])), ProtocolError, 'a kind change inside a message');
});

test('the access proof is HMAC-SHA256 over the parts', async () => {
  // The proof: HMAC-SHA256 over the parts, each followed by a zero byte.
  const key = new TextEncoder().encode('secret');
  const parts = ['peerpouch-proof-v1', 'client', 'share-a', 'peer-b', 'sha-256 AA:BB', 'sha-256 CC:DD'];
  const want = createHmac('sha256', key).update(Buffer.concat(parts.map((p) => Buffer.from(p + '\0')))).digest('hex');
  assert.equal(await makeProof(key, ...parts.slice(1)), want);
  assert.notEqual(await makeProof(key, 'server', ...parts.slice(2)), want);
});

test('numbered signals are applied in order, unnumbered ones at once', async () => {
  // A sharer's pending notice (unnumbered, a type this client does not know) passes through on
  // its own and leaves the numbered signals in order: the client ignores it and loses nothing.
  const applied = [];
  const removed = [];
  const sin = new SignalIn({ remove: async (id) => removed.push(id) }, (d) => applied.push(d));
  sin.take({ _id: 's-signal-2', _rev: '1-a', data: { candidate: null }, n: 1 });
  sin.take({ _id: 's-signal-p', _rev: '1-b', data: { type: 'pending' } });
  sin.take({ _id: 's-signal-1', _rev: '1-c', data: { type: 'answer', sdp: 'v=0' }, n: 0 });
  assert.deepEqual(applied, [{ type: 'pending' }, { type: 'answer', sdp: 'v=0' }, { candidate: null }]);
  assert.deepEqual(removed, ['s-signal-2', 's-signal-p', 's-signal-1']);
});

test('a live subscription whose reader does not keep up ends (503) instead of growing the queue', async () => {
  const { ServerLink, SUBSCRIPTION_QUEUE_LIMIT } = await import('../src/protocol.js');
  // No WebRTC in Node.js: a stand-in connection; frames stay queued (no channel drains them).
  globalThis.RTCPeerConnection ??= class {
    close() {}
  };
  let deliver;
  let stopped = 0;
  const db = {
    execute: async () => ({ result: 'info' }),
    subscribe(_req, onBatch) {
      deliver = onBatch;
      return () => stopped++;
    },
  };
  const link = new ServerLink('share-x', db, { frame: 16384 });
  link.isReady = true;
  const request = new TextEncoder().encode(JSON.stringify({ subscribe: { since: 0 } }));
  link.onMessage({ kind: 2, id: 5, payload: request });
  const row = { id: 'd', seq: 1, changes: [{ rev: '1-a' }], doc: { _id: 'd', text: 'x'.repeat(100000) } };
  const batches = Math.ceil(SUBSCRIPTION_QUEUE_LIMIT / 100000) + 5;
  for (let i = 0; i < batches; i++) deliver({ results: [row], last_seq: i + 1 });
  assert.equal(stopped, 1, 'the subscription was stopped');
  assert.ok(link.outBytes < SUBSCRIPTION_QUEUE_LIMIT + 200000, `queued ${link.outBytes} bytes`);
  const frames = link.out.find(([id]) => id === 5)[1];
  const last = frames[frames.length - 1];
  assert.equal(last[0], 5, 'the last frame of the call is a stream end');
  const end = JSON.parse(new TextDecoder().decode(last.subarray(6)));
  assert.equal(end.error.status, 503);
  link.shut('test over');
});
