// Proxy contract and worker channels: stake, commits, payouts, closing only once every client channel is settled.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { internal } from '@ton/sandbox';
import {
  world, body, txOn, feesOf, undelivered, ERR, FEE, TAG, OP, keyPair, voucher, channelState, proxyState, workerState,
  contractAddress, toNano, CODE, workerInitData, beginCell, compileFixture, GLOBAL_ID,
} from './helpers.mjs';

async function openClient(w, name = 'client', amount = toNano('5'), stake = toNano('2')) {
  const client = await w.bc.treasury(name);
  const init = w.clientInit(client.address);
  const ch = contractAddress(0, init);
  await client.send({ to: ch, value: amount + FEE.deposit, init, body: body.deposit(stake) });
  return { client, ch };
}

async function redeem(w, workerWallet, seqno, amount,
  { key = w.proxyKey, sender = workerWallet, value = toNano('0.05'), globalId = GLOBAL_ID } = {}) {
  const init = w.workerInit(workerWallet.address);
  const wc = contractAddress(0, init);
  const v = voucher(key, TAG.payout, wc, seqno, amount, globalId);
  const r = await sender.send({ to: wc, value, init, body: body.redeem(v) });
  return { wc, r };
}

test('proxy: becomes active at its minimum stake; stake, commits and closing are the owner\'s', async () => {
  const w = await world({ stake: toNano('4') });
  assert.equal((await proxyState(w)).status, 0);
  let r = await w.proxyOwner.send({ to: w.proxy, value: toNano('6') + FEE.deposit, body: body.addStake() });
  assert.ok(txOn(r, w.proxy).success);
  let s = await proxyState(w);
  assert.equal(s.status, 1);
  assert.equal(s.stake, toNano('10'));
  const mallory = await w.bc.treasury('mallory');
  for (const b of [body.commit(1n, Buffer.alloc(32, 1)), body.startClose(), body.proxyWithdraw()]) {
    r = await mallory.send({ to: w.proxy, value: toNano('0.05'), body: b });
    assert.equal(txOn(r, w.proxy).exitCode, ERR.unauthorized);
  }
  // a deploy message from anyone but the root is refused
  r = await mallory.send({ to: w.proxy, value: toNano('0.05'), body: beginCell().storeUint(OP.proxy_deploy, 32).storeUint(0, 64).endCell() });
  assert.equal(txOn(r, w.proxy).exitCode, ERR.unauthorized);
  r = await w.proxyOwner.send({ to: w.proxy, value: toNano('0.05'), body: body.commit(5n, Buffer.alloc(32, 0xab)) });
  assert.ok(txOn(r, w.proxy).success);
  const c = (await w.get(w.proxy, 'get_commit')).stackReader;
  assert.equal(c.readBigNumber(), 5n);
  assert.equal(c.readBigNumber(), BigInt('0x' + 'ab'.repeat(32)));
  // no rollback: an older or equal seqno is refused
  r = await w.proxyOwner.send({ to: w.proxy, value: toNano('0.05'), body: body.commit(5n, Buffer.alloc(32, 1)) });
  assert.equal(txOn(r, w.proxy).exitCode, ERR.old_voucher);
  // the params snapshot
  const p = (await w.get(w.proxy, 'get_proxy_params')).stackReader;
  assert.deepEqual([p.readNumber(), p.readNumber(), p.readBigNumber(), p.readBigNumber(), p.readNumber()],
    [w.params.client_close_delay, w.params.proxy_close_delay, w.params.min_client_stake, w.params.min_proxy_stake, 1]);
  // its derivation of channel addresses matches ours
  const cl = await w.bc.treasury('client');
  const a = (await w.get(w.proxy, 'get_client_channel_address', [{ type: 'slice', cell: beginCell().storeAddress(cl.address).endCell() },
    { type: 'int', value: 0n }])).stackReader.readAddress();
  assert.ok(a.equals(contractAddress(0, w.clientInit(cl.address))));
  const wa = (await w.get(w.proxy, 'get_worker_channel_address', [{ type: 'slice', cell: beginCell().storeAddress(cl.address).endCell() }])).stackReader.readAddress();
  assert.ok(wa.equals(contractAddress(0, w.workerInit(cl.address))));
});

test('worker: redeems cumulative payouts exactly; wrong signer, replayed and older vouchers fail', async () => {
  const w = await world();
  const { ch } = await openClient(w);
  await w.proxyOwner.send({ to: ch, value: toNano('0.05'), body: body.charge(voucher(w.proxyKey, TAG.charge, ch, 1, toNano('3'))) });
  const worker = await w.bc.treasury('worker');
  let { wc, r } = await redeem(w, worker, 1, toNano('1'), { key: keyPair('mallory') });
  assert.equal(txOn(r, wc).exitCode, ERR.bad_signature);
  const before = await Promise.all([worker.address, w.proxy].map((a) => w.balance(a)));
  ({ r } = await redeem(w, worker, 1, toNano('1')));
  assert.ok(txOn(r, wc).success && txOn(r, w.proxy).success);
  const after = await Promise.all([worker.address, w.proxy].map((a) => w.balance(a)));
  assert.equal(before[1] - after[1], toNano('1'), 'the proxy pays exactly the payout');
  const wcBalance = await w.balance(wc);
  // the worker's wallet rises by the payout minus the fees of the whole operation (wallet included)
  assert.equal(after[0] - before[0], toNano('1') - feesOf(r) - wcBalance);
  assert.deepEqual(await workerState(w, wc), { seqno: 1n, paid: toNano('1') });
  assert.equal((await proxyState(w)).paid_out, toNano('1'));
  ({ r } = await redeem(w, worker, 1, toNano('1')));   // replay
  assert.equal(txOn(r, wc).exitCode, ERR.old_voucher);
  ({ r } = await redeem(w, worker, 0, toNano('2')));   // older seqno
  assert.equal(txOn(r, wc).exitCode, ERR.old_voucher);
  ({ r } = await redeem(w, worker, 2, toNano('0.5'))); // lower amount
  assert.equal(txOn(r, wc).exitCode, ERR.old_voucher);
  // anyone may submit the worker's voucher: the money still goes to the worker
  const stranger = await w.bc.treasury('stranger');
  const wb = await w.balance(worker.address);
  ({ r } = await redeem(w, worker, 3, toNano('1.75'), { sender: stranger }));
  assert.ok(txOn(r, wc).success);
  const pay = txOn(r, w.proxy).outs[0];
  assert.ok(pay.info.dest.equals(worker.address));
  assert.ok((await w.balance(worker.address)) - wb > toNano('0.75'));
  assert.equal((await proxyState(w)).paid_out, toNano('1.75'));
  // forged worker channel (same code, another key) and a direct fake request are refused by the proxy
  const fakeInit = { code: CODE.worker, data: workerInitData(w.proxy, worker.address, keyPair('mallory').publicKey) };
  const fake = contractAddress(0, fakeInit);
  r = await worker.send({ to: fake, value: toNano('0.05'), init: fakeInit,
    body: body.redeem(voucher(keyPair('mallory'), TAG.payout, fake, 1, toNano('5'))) });
  assert.equal(txOn(r, w.proxy).exitCode, ERR.not_child);
  assert.deepEqual(await workerState(w, fake), { seqno: 1n, paid: 0n }, 'the bounce rolled the forged channel back');
  r = await stranger.send({ to: w.proxy, value: toNano('0.05'), body: body.payoutRequest(toNano('5'), stranger.address) });
  assert.equal(txOn(r, w.proxy).exitCode, ERR.not_child);
  assert.equal((await proxyState(w)).paid_out, toNano('1.75'));
});

test('worker: a payout beyond the proxy\'s funds bounces; the same voucher succeeds once the funds are there', async () => {
  const w = await world();
  const worker = await w.bc.treasury('worker');
  // the proxy has its 10 TON stake and earned nothing: 12 TON cannot be paid
  let { wc, r } = await redeem(w, worker, 1, toNano('12'));
  assert.equal(txOn(r, w.proxy).exitCode, ERR.no_funds);
  assert.ok(txOn(r, wc, 1).tx.inMessage.info.bounced);
  assert.deepEqual(await workerState(w, wc), { seqno: 1n, paid: 0n });
  const { ch } = await openClient(w, 'client', toNano('5'));
  await w.proxyOwner.send({ to: ch, value: toNano('0.05'), body: body.charge(voucher(w.proxyKey, TAG.charge, ch, 1, toNano('3'))) });
  ({ r } = await redeem(w, worker, 1, toNano('12')));
  assert.ok(txOn(r, w.proxy).success);
  assert.deepEqual(await workerState(w, wc), { seqno: 1n, paid: toNano('12') });
  const s = await proxyState(w);
  assert.equal(s.paid_out, toNano('12'));
  assert.equal(s.earned + s.stake - s.paid_out, toNano('1'));
});

test('worker: a refusing proxy never loses the worker\'s claim (bounce handler)', async () => {
  const w = await world();
  const refuserInit = { code: await compileFixture('refuser'), data: beginCell().endCell() };
  const refuser = contractAddress(0, refuserInit);
  await w.owner.send({ to: refuser, value: toNano('1'), init: refuserInit });
  const worker = await w.bc.treasury('worker');
  const init = { code: CODE.worker, data: workerInitData(refuser, worker.address, w.proxyKey.publicKey) };
  const wc = contractAddress(0, init);
  const r = await worker.send({ to: wc, value: toNano('0.05'), init, body: body.redeem(voucher(w.proxyKey, TAG.payout, wc, 4, toNano('1'))) });
  assert.equal(txOn(r, refuser).exitCode, 999);
  assert.deepEqual(await workerState(w, wc), { seqno: 4n, paid: 0n });
  assert.equal(undelivered(r).length, 0);
});

test('proxy: gets its stake and fees back only after its close delay and once every client channel is settled', async () => {
  const w = await world();
  const a = await openClient(w, 'a');
  const b = await openClient(w, 'b');
  await w.proxyOwner.send({ to: a.ch, value: toNano('0.05'), body: body.charge(voucher(w.proxyKey, TAG.charge, a.ch, 1, toNano('2'))) });
  const worker = await w.bc.treasury('worker');
  await redeem(w, worker, 1, toNano('1.5'));
  let r = await w.proxyOwner.send({ to: w.proxy, value: toNano('0.05'), body: body.proxyWithdraw() });
  assert.equal(txOn(r, w.proxy).exitCode, ERR.bad_state);
  r = await w.proxyOwner.send({ to: w.proxy, value: toNano('0.05'), body: body.startClose() });
  assert.ok(txOn(r, w.proxy).success);
  assert.equal((await proxyState(w)).status, 2);
  // no new clients while closing
  const late = await w.bc.treasury('late');
  const lateInit = w.clientInit(late.address);
  const lateCh = contractAddress(0, lateInit);
  r = await late.send({ to: lateCh, value: toNano('2') + FEE.deposit, init: lateInit, body: body.deposit(toNano('1')) });
  assert.equal(txOn(r, w.proxy).exitCode, ERR.bad_state);
  assert.equal(await w.balance(lateCh), 0n, 'refunded');
  // workers may still redeem during the delay
  ({ r } = await redeem(w, worker, 2, toNano('2')));
  assert.ok(txOn(r, w.proxy).success);
  w.bc.now += w.params.proxy_close_delay;
  r = await w.proxyOwner.send({ to: w.proxy, value: toNano('0.05'), body: body.proxyWithdraw() });
  assert.equal(txOn(r, w.proxy).exitCode, ERR.open_channels);
  // the proxy settles its clients with final vouchers (anyone may submit them)
  await w.proxyOwner.send({ to: a.ch, value: toNano('0.05'), body: body.closeFinal(voucher(w.proxyKey, TAG.final, a.ch, 2, toNano('2.5'))) });
  await w.proxyOwner.send({ to: b.ch, value: toNano('0.05'), body: body.closeFinal(voucher(w.proxyKey, TAG.final, b.ch, 1, toNano('1'))) });
  const s = await proxyState(w);
  assert.equal(s.open_clients, 0);
  assert.equal(s.earned, toNano('3.5'));
  assert.equal(s.paid_out, toNano('2'));
  const onProxy = await w.balance(w.proxy);
  assert.ok(onProxy >= s.stake + s.earned - s.paid_out, 'the contract holds at least what its books say');
  const ob = await w.balance(w.proxyOwner.address);
  r = await w.proxyOwner.send({ to: w.proxy, value: toNano('0.05'), body: body.proxyWithdraw() });
  const p = txOn(r, w.proxy);
  assert.ok(p.success);
  assert.equal(await w.balance(w.proxy), 0n, 'nothing stays on the proxy contract');
  assert.equal((await w.balance(w.proxyOwner.address)) - ob, onProxy - feesOf(r));
  assert.equal((await proxyState(w)).status, 3);
  // closed: late payouts are refused and the worker keeps its claim
  ({ r } = await redeem(w, worker, 3, toNano('2.1')));
  assert.equal(txOn(r, w.proxy).exitCode, ERR.bad_state);
  assert.equal((await workerState(w, contractAddress(0, w.workerInit(worker.address)))).paid, toNano('2'));
});

test('reference bug: a client closing while its proxy is gone gets everything back; no notification runs short of gas', async () => {
  const w = await world();
  const { client, ch } = await openClient(w, 'client', toNano('5'), toNano('2'));
  // the proxy charged once, then its operator vanished
  await w.proxyOwner.send({ to: ch, value: toNano('0.05'), body: body.charge(voucher(w.proxyKey, TAG.charge, ch, 1, toNano('0.7'))) });
  const clientStart = await w.balance(client.address);
  const chStart = await w.balance(ch);
  const proxyStart = await w.balance(w.proxy);
  // even a request carrying the bare minimum closes the channel completely
  let r1 = await client.send({ to: ch, value: FEE.min_op_value, body: body.requestClose() });
  w.bc.now += w.params.client_close_delay;
  let r2 = await client.send({ to: ch, value: FEE.min_op_value, body: body.finalizeClose() });
  const c = txOn(r2, ch);
  assert.ok(c.success);
  const p = txOn(r2, w.proxy);
  assert.ok(p.success, 'the proxy ran its handler to the end');
  assert.ok(p.tx.description.computePhase.gasFees < FEE.notify, `notification gas ${p.tx.description.computePhase.gasFees} < ${FEE.notify}`);
  assert.equal(await w.balance(ch), 0n);
  const fees = feesOf(r1) + feesOf(r2);
  const clientEnd = await w.balance(client.address);
  // every nanoTON: the channel's whole holding (balance 4.3 TON incl. the 2 TON stake, plus its buffer) went to the
  // client, except the notification's value (kept by the proxy, which paid its own gas from it) and the fees of
  // the two operations
  assert.equal(clientEnd - clientStart, chStart - FEE.notify - (fees - p.tx.totalFees.coins));
  assert.equal((await w.balance(w.proxy)) - proxyStart, FEE.notify - p.tx.totalFees.coins);
  assert.ok(clientEnd - clientStart > toNano('4.3'), 'balance and stake back, in full');
  assert.equal((await proxyState(w)).open_clients, 0);
});

test('item 7: a payout voucher signed for another network (global id) is refused', async () => {
  const w = await world();
  const worker = await w.bc.treasury('worker');
  let { wc, r } = await redeem(w, worker, 1, toNano('1'), { globalId: -3 });
  assert.equal(txOn(r, wc).exitCode, ERR.bad_signature);
  assert.equal((await proxyState(w)).paid_out, 0n);
  ({ r } = await redeem(w, worker, 1, toNano('1')));
  assert.ok(txOn(r, wc).success && txOn(r, w.proxy).success);
  assert.equal((await proxyState(w)).paid_out, toNano('1'));
});

test('item 9: a forged bounce cannot make one payout voucher pay twice', async () => {
  const w = await world();
  const { ch } = await openClient(w);
  await w.proxyOwner.send({ to: ch, value: toNano('0.05'), body: body.charge(voucher(w.proxyKey, TAG.charge, ch, 1, toNano('3'))) });
  const worker = await w.bc.treasury('worker');
  let { wc, r } = await redeem(w, worker, 1, toNano('1'));
  assert.ok(txOn(r, w.proxy).success);
  // what the proxy's refusal of that payout would look like: 0xffffffff, then the payout_request's first 256 bits
  const refusal = beginCell().storeUint(0xffffffff, 32).storeUint(OP.payout_request, 32).storeUint(0, 64)
    .storeCoins(toNano('1')).endCell();
  // 1. injected with the bounced flag from the worker's own wallet (a chain that lets a sender set the flag)
  r = await w.bc.sendMessage(internal({ from: worker.address, to: wc, value: toNano('0.05'), bounce: false, bounced: true, body: refusal }));
  assert.ok(txOn(r, wc).tx.inMessage.info.bounced);
  assert.deepEqual(await workerState(w, wc), { seqno: 1n, paid: toNano('1') }, 'the channel believes bounces from its proxy only');
  // 2. sent by a contract that sets the flag itself: the chain clears it, as real TON does
  const forgerInit = { code: await compileFixture('forger'), data: beginCell().endCell() };
  const forger = contractAddress(0, forgerInit);
  r = await worker.send({ to: forger, value: toNano('0.1'), init: forgerInit,
    body: beginCell().storeAddress(wc).storeRef(refusal).endCell() });
  const seen = txOn(r, wc);
  assert.equal(seen.tx.inMessage.info.bounced, false, 'only the chain marks a message bounced');
  assert.equal(seen.exitCode, ERR.unknown_op);
  assert.deepEqual(await workerState(w, wc), { seqno: 1n, paid: toNano('1') });
  // the same voucher again pays nothing
  ({ r } = await redeem(w, worker, 1, toNano('1')));
  assert.equal(txOn(r, wc).exitCode, ERR.old_voucher);
  assert.equal((await proxyState(w)).paid_out, toNano('1'));
});
