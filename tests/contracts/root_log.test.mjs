// Root registry log (issue 11 item 5): every change appended as an entry, the root computed by the contract as in
// RFC 6962/9162, the owner's signed tree head kept (and any other head refused).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { sign } from '@ton/crypto';
import {
  world, body, txOn, ERR, DEFAULT_PARAMS, keyPair, toNano, EMPTY_ROOT, leafHash, merkleRoot, logEntry, treeHeadCell,
} from './helpers.mjs';

const LOG_KEY = keyPair('root-log');

async function log(w) {
  const r = (await w.get(w.root, 'get_log')).stackReader;
  return { size: r.readNumber(), root: Buffer.from(r.readBigNumber().toString(16).padStart(64, '0'), 'hex'),
    signedSize: r.readNumber(), signedRoot: r.readBigNumber(), signature: r.readCellOpt(),
    key: r.readBigNumber() };
}

const entry = async (w, i) => (await w.get(w.root, 'get_log_entry', [{ type: 'int', value: BigInt(i) }])).stackReader
  .readCellOpt();

function signHead(w, size, rootHash, kp = LOG_KEY) {
  return body.signHead(size, rootHash, sign(treeHeadCell(w.root, size, rootHash).hash(), kp.secretKey));
}

test('root log: each change is an entry, and the root is the RFC 6962 tree over them', async () => {
  const w = await world();
  // the world made two changes: a model hash at deployment (version 1), the proxy registration (version 2)
  const changes = [logEntry(1, body.setHash(3, Buffer.alloc(32, 7), true)),
    logEntry(2, body.registerProxy(w.proxyOwner.address, w.proxyKey.publicKey, 'proxy.example:8443'))];
  for (let n = 3; n <= 9; n++) {   // sizes 3..9 cover every frontier shape up to a carry into height 3
    const b = n % 2 ? body.setHash(2, Buffer.alloc(32, n), true) : body.setParams({ ...DEFAULT_PARAMS, prompt: n });
    const r = await w.owner.send({ to: w.root, value: toNano('0.05'), body: b });
    assert.ok(txOn(r, w.root).success);
    changes.push(logEntry(n, b));
    const l = await log(w);
    assert.equal(l.size, n);
    assert.deepEqual(l.root, merkleRoot(changes.map((c) => leafHash(c.hash()))));
  }
  for (let i = 0; i < changes.length; i++) assert.ok((await entry(w, i)).equals(changes[i]));
  assert.equal(await entry(w, changes.length), null);
  const l = await log(w);
  assert.equal(l.key, BigInt('0x' + LOG_KEY.publicKey.toString('hex')));
  assert.equal(l.signedSize, 0);
  assert.equal(l.signature, null);
  assert.equal(l.signedRoot, BigInt('0x' + EMPTY_ROOT.toString('hex')));
});

test('root log: the owner signs the current head; a stale, forged or foreign head is refused', async () => {
  const w = await world();
  const stranger = await w.bc.treasury('stranger');
  const { size, root } = await log(w);
  const version = (await w.get(w.root, 'get_version')).stackReader.readNumber();
  let r = await stranger.send({ to: w.root, value: toNano('0.05'), body: signHead(w, size, root) });
  assert.equal(txOn(r, w.root).exitCode, ERR.unauthorized);
  r = await w.owner.send({ to: w.root, value: toNano('0.05'), body: signHead(w, size, root, keyPair('not-the-log-key')) });
  assert.equal(txOn(r, w.root).exitCode, ERR.bad_signature);
  r = await w.owner.send({ to: w.root, value: toNano('0.05'), body: signHead(w, size - 1, root) });
  assert.equal(txOn(r, w.root).exitCode, ERR.bad_params);
  r = await w.owner.send({ to: w.root, value: toNano('0.05'), body: signHead(w, size, Buffer.alloc(32, 1)) });
  assert.equal(txOn(r, w.root).exitCode, ERR.bad_params);
  // signed for another network (global id), with the right key: the hash differs, so the signature does not hold
  const foreign = body.signHead(size, root, sign(treeHeadCell(w.root, size, root, -3).hash(), LOG_KEY.secretKey));
  r = await w.owner.send({ to: w.root, value: toNano('0.05'), body: foreign });
  assert.equal(txOn(r, w.root).exitCode, ERR.bad_signature);
  r = await w.owner.send({ to: w.root, value: toNano('0.05'), body: signHead(w, size, root) });
  assert.ok(txOn(r, w.root).success);
  const l = await log(w);
  assert.equal(l.signedSize, size);
  assert.equal(l.signedRoot, BigInt('0x' + root.toString('hex')));
  assert.ok(l.signature.beginParse().loadBuffer(64).equals(
    sign(treeHeadCell(w.root, size, root).hash(), LOG_KEY.secretKey)));
  // signing is no change of the registry: no version, no entry
  assert.equal((await w.get(w.root, 'get_version')).stackReader.readNumber(), version);
  assert.equal(l.size, size);
  // once the log grows, the old head stays the signed one until the owner signs the new one
  r = await w.owner.send({ to: w.root, value: toNano('0.05'), body: body.setHash(1, Buffer.alloc(32, 5), true) });
  assert.ok(txOn(r, w.root).success);
  const grown = await log(w);
  assert.equal(grown.size, size + 1);
  assert.equal(grown.signedSize, size);
  r = await w.owner.send({ to: w.root, value: toNano('0.05'), body: signHead(w, size, root) });
  assert.equal(txOn(r, w.root).exitCode, ERR.bad_params);   // a head the log has moved past
});

test('root log: the log key changes only by a logged change of the owner', async () => {
  const w = await world();
  const next = keyPair('next-log-key');
  const before = await log(w);
  const r = await w.owner.send({ to: w.root, value: toNano('0.05'), body: body.setLogKey(next.publicKey) });
  assert.ok(txOn(r, w.root).success);
  const l = await log(w);
  assert.equal(l.key, BigInt('0x' + next.publicKey.toString('hex')));
  assert.equal(l.size, before.size + 1);
  assert.ok((await entry(w, before.size)).equals(logEntry(3, body.setLogKey(next.publicKey))));
  let s = await w.owner.send({ to: w.root, value: toNano('0.05'), body: signHead(w, l.size, l.root) });
  assert.equal(txOn(s, w.root).exitCode, ERR.bad_signature);   // the old key no longer signs
  s = await w.owner.send({ to: w.root, value: toNano('0.05'), body: signHead(w, l.size, l.root, next) });
  assert.ok(txOn(s, w.root).success);
});
