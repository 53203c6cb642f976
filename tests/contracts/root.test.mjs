// Root registry: deployment, get-methods, owner-only changes, version bumps, proxy registration.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Address } from '@ton/core';
import {
  world, body, txOn, ERR, DEFAULT_PARAMS, CODE, GLOBAL_ID, keyPair, proxyInitData, contractAddress, toNano, beginCell,
  Cell, paramsCell,
} from './helpers.mjs';

const version = async (w) => (await w.get(w.root, 'get_version')).stackReader.readNumber();

test('root: get-methods return the deployed parameters, codes and registry', async () => {
  const w = await world();
  assert.equal(await version(w), 2);   // model hash added, proxy registered
  const owner = (await w.get(w.root, 'get_owner')).stackReader.readAddress();
  assert.ok(owner.equals(w.owner.address));
  const p = (await w.get(w.root, 'get_params')).stackReader;
  const got = [];
  for (let i = 0; i < 11; i++) got.push(p.readBigNumber());
  const d = DEFAULT_PARAMS;
  assert.deepEqual(got, [d.price_per_token, d.worker_fee_per_token, d.prompt, d.cached, d.completion, d.reasoning,
    d.client_close_delay, d.proxy_close_delay, d.min_client_stake, d.min_proxy_stake, d.max_coefficient].map(BigInt));
  // the chain's own global id (ConfigParam 19), the one every voucher is bound to
  assert.equal((await w.get(w.root, 'get_global_id')).stackReader.readNumber(), GLOBAL_ID);
  const c = (await w.get(w.root, 'get_codes')).stackReader;
  assert.ok(c.readCell().equals(CODE.proxy));
  assert.ok(c.readCell().equals(CODE.client));
  assert.ok(c.readCell().equals(CODE.worker));
  const allowed = async (kind, fill) => (await w.get(w.root, 'is_allowed',
    [{ type: 'int', value: BigInt(kind) }, { type: 'int', value: BigInt('0x' + Buffer.alloc(32, fill).toString('hex')) }])).stackReader.readNumber();
  assert.equal(await allowed(3, 7), -1);
  assert.equal(await allowed(3, 8), 0);
  assert.equal(await allowed(1, 7), 0);
});

const mediaPrices = async (w) => {
  const r = (await w.get(w.root, 'get_media_prices')).stackReader;
  return [r.readBigNumber(), r.readBigNumber()];
};

test('root: holds the price per second of media beside the token prices, within the same rules', async () => {
  const w = await world();
  assert.deepEqual(await mediaPrices(w), [20000n, 16000n]);
  const v0 = await version(w);
  let r = await w.owner.send({ to: w.root, value: toNano('0.05'), body: body.setParams(
    { ...DEFAULT_PARAMS, price_per_media_second: 30000n, worker_fee_per_media_second: 25000n }) });
  assert.ok(txOn(r, w.root).success);
  assert.equal(await version(w), v0 + 1);
  assert.deepEqual(await mediaPrices(w), [30000n, 25000n]);
  // a worker fee above the client's price per second would pay out more than it charges
  r = await w.owner.send({ to: w.root, value: toNano('0.05'), body: body.setParams(
    { ...DEFAULT_PARAMS, price_per_media_second: 100n, worker_fee_per_media_second: 101n }) });
  assert.equal(txOn(r, w.root).exitCode, ERR.bad_params);
  assert.deepEqual(await mediaPrices(w), [30000n, 25000n]);
  // parameters in the layout before media (no tail) are still accepted: media is then free, and get_params unchanged
  const { price_per_media_second: _p, worker_fee_per_media_second: _f, ...old } = DEFAULT_PARAMS;
  r = await w.owner.send({ to: w.root, value: toNano('0.05'), body: body.setParams({ ...old, price_per_token: 25n }) });
  assert.ok(txOn(r, w.root).success);
  assert.deepEqual(await mediaPrices(w), [0n, 0n]);
  const p = (await w.get(w.root, 'get_params')).stackReader;
  assert.equal(p.readBigNumber(), 25n);
  // anything after the media tail is malformed
  const extra = beginCell().storeSlice(paramsCell(DEFAULT_PARAMS).beginParse()).storeUint(1, 8).endCell();
  r = await w.owner.send({ to: w.root, value: toNano('0.05'),
    body: beginCell().storeUint(0x52000001, 32).storeUint(0, 64).storeRef(extra).endCell() });
  assert.notEqual(txOn(r, w.root).exitCode, 0);
});

test('root: registers a proxy at the address derived from its code, key and the root parameters', async () => {
  const w = await world({ stake: 0n });
  const r = txOn(w.results.register, w.root);
  assert.ok(r.success);
  assert.ok(txOn(w.results.register, w.proxy).success);   // deployed by the root
  const g = (await w.get(w.root, 'get_proxy', [{ type: 'int', value: BigInt('0x' + w.proxy.hash.toString('hex')) }])).stackReader;
  assert.equal(g.readNumber(), -1);
  assert.equal(g.readBigNumber(), BigInt('0x' + w.proxyKey.publicKey.toString('hex')));
  assert.ok(g.readAddress().equals(w.proxyOwner.address));
  assert.equal(g.readNumber(), 1);
  assert.equal(g.readCell().beginParse().loadStringTail(), 'proxy.example:8443');
  const a = (await w.get(w.root, 'get_proxy_address', [
    { type: 'slice', cell: beginCell().storeAddress(w.proxyOwner.address).endCell() },
    { type: 'int', value: BigInt('0x' + w.proxyKey.publicKey.toString('hex')) }])).stackReader.readAddress();
  // the root's version moved on (registration), so a new registration would land elsewhere
  const expectNow = contractAddress(0, { code: CODE.proxy, data: proxyInitData(w.root, w.proxyOwner.address, w.proxyKey.publicKey, DEFAULT_PARAMS, 2) });
  assert.ok(a.equals(expectNow));
  // the proxy contract knows its root, owner and key
  const id = (await w.get(w.proxy, 'get_identity')).stackReader;
  assert.ok(id.readAddress().equals(w.root));
  assert.ok(id.readAddress().equals(w.proxyOwner.address));
  // unregister
  const u = await w.owner.send({ to: w.root, value: toNano('0.05'), body: body.unregisterProxy(w.proxy) });
  assert.ok(txOn(u, w.root).success);
  const g2 = (await w.get(w.root, 'get_proxy', [{ type: 'int', value: BigInt('0x' + w.proxy.hash.toString('hex')) }])).stackReader;
  assert.equal(g2.readNumber(), 0);
  const u2 = await w.owner.send({ to: w.root, value: toNano('0.05'), body: body.unregisterProxy(w.proxy) });
  assert.equal(txOn(u2, w.root).exitCode, ERR.bad_params);
});

test('root: every change bumps the version; only the owner may change anything', async () => {
  const w = await world();
  const stranger = await w.bc.treasury('stranger');
  const v0 = await version(w);
  const p2 = { ...DEFAULT_PARAMS, price_per_token: 30n, client_close_delay: 60 };
  for (const b of [body.setParams(p2), body.setHash(1, Buffer.alloc(32, 1), true), body.setCodes(CODE),
    body.registerProxy(stranger.address, keyPair('x').publicKey, 'x'), body.setOwner(stranger.address)]) {
    const r = await stranger.send({ to: w.root, value: toNano('0.5'), body: b });
    assert.equal(txOn(r, w.root).exitCode, ERR.unauthorized);
  }
  assert.equal(await version(w), v0);
  let r = await w.owner.send({ to: w.root, value: toNano('0.05'), body: body.setParams(p2) });
  assert.ok(txOn(r, w.root).success);
  assert.equal(await version(w), v0 + 1);
  const p = (await w.get(w.root, 'get_params')).stackReader;
  assert.equal(p.readBigNumber(), 30n);
  r = await w.owner.send({ to: w.root, value: toNano('0.05'), body: body.setHash(2, Buffer.alloc(32, 9), true) });
  assert.equal(await version(w), v0 + 2);
  r = await w.owner.send({ to: w.root, value: toNano('0.05'), body: body.setHash(2, Buffer.alloc(32, 9), false) });
  assert.equal(await version(w), v0 + 3);
  // a worker fee above the client price would make the proxy pay out more than it charges
  r = await w.owner.send({ to: w.root, value: toNano('0.05'), body: body.setParams({ ...p2, worker_fee_per_token: 31n }) });
  assert.equal(txOn(r, w.root).exitCode, ERR.bad_params);
  // the highest worker coefficient must be positive: 0 would leave no worker a price
  r = await w.owner.send({ to: w.root, value: toNano('0.05'), body: body.setParams({ ...p2, max_coefficient: 0 }) });
  assert.equal(txOn(r, w.root).exitCode, ERR.bad_params);
  r = await w.owner.send({ to: w.root, value: toNano('0.05'), body: body.setParams({ ...p2, max_coefficient: 3000 }) });
  assert.ok(txOn(r, w.root).success);
  const p3 = (await w.get(w.root, 'get_params')).stackReader;
  for (let i = 0; i < 10; i++) p3.readBigNumber();
  assert.equal(p3.readNumber(), 3000);
  r = await w.owner.send({ to: w.root, value: toNano('0.05'), body: body.setParams(p2) });
  assert.ok(txOn(r, w.root).success);
  // codes must be exactly three refs
  r = await w.owner.send({ to: w.root, value: toNano('0.05'),
    body: beginCell().storeUint(0x52000003, 32).storeUint(0, 64).storeRef(beginCell().storeRef(Cell.EMPTY).endCell()).endCell() });
  assert.equal(txOn(r, w.root).exitCode, ERR.bad_params);
  r = await w.owner.send({ to: w.root, value: toNano('0.05'), body: beginCell().storeUint(0x52ffffff, 32).storeUint(0, 64).endCell() });
  assert.equal(txOn(r, w.root).exitCode, ERR.unknown_op);
  // ownership moves
  r = await w.owner.send({ to: w.root, value: toNano('0.05'), body: body.setOwner(stranger.address) });
  assert.ok(txOn(r, w.root).success);
  r = await w.owner.send({ to: w.root, value: toNano('0.05'), body: body.setHash(1, Buffer.alloc(32, 1), true) });
  assert.equal(txOn(r, w.root).exitCode, ERR.unauthorized);
  r = await stranger.send({ to: w.root, value: toNano('0.05'), body: body.setHash(1, Buffer.alloc(32, 1), true) });
  assert.ok(txOn(r, w.root).success);
  assert.equal(await version(w), v0 + 7);
});
