// Client channel: deposit, raise stake, withdraw above stake, charge, close at once or after the delay,
// and every attack on it. Amounts are asserted to the nanoTON, with fees taken from the transactions.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { internal } from '@ton/sandbox';
import {
  world, body, txOn, feesOf, undelivered, ERR, FEE, TAG, OP, keyPair, voucher, channelState, proxyState,
  contractAddress, toNano, CODE, clientInitData, beginCell, GLOBAL_ID,
  compileFixture,
} from './helpers.mjs';

async function open(w, name = 'client', { amount = toNano('5'), stake = toNano('2'), nonce = 0 } = {}) {
  const client = await w.bc.treasury(name);
  const init = w.clientInit(client.address, nonce);
  const ch = contractAddress(0, init);
  const r = await client.send({ to: ch, value: amount + FEE.deposit, init, body: body.deposit(stake) });
  return { client, ch, init, r };
}

/** Sum of balance changes over `addrs` plus the fees of `result` must be zero: nothing created or lost. */
async function conserved(w, addrs, before, result) {
  const after = await Promise.all(addrs.map((a) => w.balance(a)));
  const delta = after.reduce((s, x, i) => s + x - before[i], 0n);
  assert.equal(delta + feesOf(result), 0n, 'every nanoTON accounted for');
  assert.equal(undelivered(result).length, 0, 'no message left undelivered');
  return after;
}

test('channel: first deposit opens it and registers it with the proxy', async () => {
  const w = await world();
  const { ch, r } = await open(w);
  assert.ok(txOn(r, ch).success);
  assert.ok(txOn(r, w.proxy).success);
  assert.deepEqual(await channelState(w, ch), { state: 1, balance: toNano('5'), stake: toNano('2'), charged: 0n, seqno: 0n, unlock_at: 0 });
  assert.equal((await proxyState(w)).open_clients, 1);
  // the contract holds the balance plus what is left of the deposit fee (its gas and storage buffer)
  const buffer = (await w.balance(ch)) - toNano('5');
  assert.ok(buffer > 0n && buffer < FEE.deposit, `buffer ${buffer}`);
});

test('channel: deposits only from the client, stake within the balance and at least the minimum', async () => {
  const w = await world();
  const client = await w.bc.treasury('client');
  const init = w.clientInit(client.address);
  const ch = contractAddress(0, init);
  let r = await client.send({ to: ch, value: toNano('5'), init, body: body.deposit(toNano('0.5')) });
  assert.equal(txOn(r, ch).exitCode, ERR.stake_too_low);
  r = await client.send({ to: ch, value: toNano('1') + FEE.deposit, init, body: body.deposit(toNano('2')) });
  assert.equal(txOn(r, ch).exitCode, ERR.below_stake);
  r = await client.send({ to: ch, value: FEE.deposit, init, body: body.deposit(0n) });
  assert.equal(txOn(r, ch).exitCode, ERR.low_value);
  r = await client.send({ to: ch, value: toNano('3') + FEE.deposit, init, body: body.deposit(toNano('1')) });
  assert.ok(txOn(r, ch).success);
  const stranger = await w.bc.treasury('stranger');
  r = await stranger.send({ to: ch, value: toNano('1'), body: body.deposit(0n) });
  assert.equal(txOn(r, ch).exitCode, ERR.unauthorized);
  // top up and raise the stake
  r = await client.send({ to: ch, value: toNano('2') + FEE.deposit, body: body.deposit(toNano('1.5')) });
  assert.ok(txOn(r, ch).success);
  const s = await channelState(w, ch);
  assert.equal(s.balance, toNano('5'));
  assert.equal(s.stake, toNano('2.5'));
  assert.equal((await proxyState(w)).open_clients, 1, 'counted once');
});

test('channel: withdraw only what is above the stake, exactly', async () => {
  const w = await world();
  const { client, ch } = await open(w);
  let r = await client.send({ to: ch, value: toNano('0.05'), body: body.withdraw(toNano('3') + 1n) });
  assert.equal(txOn(r, ch).exitCode, ERR.below_stake);
  const stranger = await w.bc.treasury('stranger');
  r = await stranger.send({ to: ch, value: toNano('0.05'), body: body.withdraw(toNano('1')) });
  assert.equal(txOn(r, ch).exitCode, ERR.unauthorized);
  // below the minimum value (0.001 TON would buy too little gas even to reach the check: out of gas instead)
  r = await client.send({ to: ch, value: toNano('0.01'), body: body.withdraw(toNano('1')) });
  assert.equal(txOn(r, ch).exitCode, ERR.low_value);
  const chBefore = await w.balance(ch);
  const before = await Promise.all([client.address, ch].map((a) => w.balance(a)));
  r = await client.send({ to: ch, value: toNano('0.05'), body: body.withdraw(toNano('3')) });
  assert.ok(txOn(r, ch).success);
  await conserved(w, [client.address, ch], before, r);
  assert.equal(chBefore - (await w.balance(ch)), toNano('3'), 'the channel pays exactly the amount; the gas comes from the request');
  const s = await channelState(w, ch);
  assert.equal(s.balance, toNano('2'));
  assert.equal(s.stake, toNano('2'));
});

test('channel: charges move exactly the voucher difference to the proxy; attacks on vouchers fail', async () => {
  const w = await world();
  const { ch } = await open(w);
  const sub = w.proxyOwner;   // anyone may submit a proxy-signed voucher
  const send = (b) => sub.send({ to: ch, value: toNano('0.05'), body: b });
  const v1 = voucher(w.proxyKey, TAG.charge, ch, 1, toNano('1'));
  // wrong signer
  let r = await send(body.charge(voucher(keyPair('mallory'), TAG.charge, ch, 1, toNano('1'))));
  assert.equal(txOn(r, ch).exitCode, ERR.bad_signature);
  // a voucher for another channel, or of another kind, does not verify here
  const other = contractAddress(0, { code: CODE.client, data: clientInitData(w.proxy, w.owner.address, w.proxyKey.publicKey, 0, 3600, toNano('1')) });
  r = await send(body.charge(voucher(w.proxyKey, TAG.charge, other, 1, toNano('1'))));
  assert.equal(txOn(r, ch).exitCode, ERR.bad_signature);
  r = await send(body.charge(voucher(w.proxyKey, TAG.payout, ch, 1, toNano('1'))));
  assert.equal(txOn(r, ch).exitCode, ERR.bad_signature);
  // a signature over other numbers
  r = await send(body.charge({ ...v1, amount: toNano('2') }));
  assert.equal(txOn(r, ch).exitCode, ERR.bad_signature);
  // too little gas attached
  // (0.001 TON buys too little gas even to reach the check: out of gas, exit -14; either way nothing changes)
  r = await sub.send({ to: ch, value: toNano('0.01'), body: body.charge(v1) });
  assert.equal(txOn(r, ch).exitCode, ERR.low_value);
  r = await sub.send({ to: ch, value: toNano('0.001'), body: body.charge(v1) });
  assert.equal(txOn(r, ch).success, false);
  assert.equal((await channelState(w, ch)).charged, 0n);

  const before = await Promise.all([ch, w.proxy, sub.address].map((a) => w.balance(a)));
  r = await send(body.charge(v1));
  assert.ok(txOn(r, ch).success && txOn(r, w.proxy).success);
  const after = await conserved(w, [ch, w.proxy, sub.address], before, r);
  assert.equal(before[0] - after[0], toNano('1'), 'the channel pays exactly the charge');
  assert.equal((await proxyState(w)).earned, toNano('1'));
  // replay, older, equal seqno
  r = await send(body.charge(v1));
  assert.equal(txOn(r, ch).exitCode, ERR.old_voucher);
  r = await send(body.charge(voucher(w.proxyKey, TAG.charge, ch, 1, toNano('2'))));
  assert.equal(txOn(r, ch).exitCode, ERR.old_voucher);
  r = await send(body.charge(voucher(w.proxyKey, TAG.charge, ch, 2, toNano('0.5'))));
  assert.equal(txOn(r, ch).exitCode, ERR.old_voucher);
  // above the balance (4 TON left)
  r = await send(body.charge(voucher(w.proxyKey, TAG.charge, ch, 2, toNano('5') + 1n)));
  assert.equal(txOn(r, ch).exitCode, ERR.insufficient_balance);
  // into the stake is fine: the stake is what guarantees the proxy's unsettled charges
  r = await send(body.charge(voucher(w.proxyKey, TAG.charge, ch, 5, toNano('4'))));
  assert.ok(txOn(r, ch).success);
  assert.deepEqual(await channelState(w, ch), { state: 1, balance: toNano('1'), stake: toNano('1'), charged: toNano('4'), seqno: 5n, unlock_at: 0 });
  assert.equal((await proxyState(w)).earned, toNano('4'));
});

test('channel: close at once with the proxy-signed final voucher; everything left goes to the client', async () => {
  const w = await world();
  const { client, ch } = await open(w);
  await w.proxyOwner.send({ to: ch, value: toNano('0.05'), body: body.charge(voucher(w.proxyKey, TAG.charge, ch, 1, toNano('1'))) });
  // an ordinary charge voucher cannot close the channel
  let r = await client.send({ to: ch, value: toNano('0.05'), body: body.closeFinal(voucher(w.proxyKey, TAG.charge, ch, 2, toNano('1.2'))) });
  assert.equal(txOn(r, ch).exitCode, ERR.bad_signature);
  const fin = voucher(w.proxyKey, TAG.final, ch, 2, toNano('1.2'));
  const addrs = [client.address, ch, w.proxy];
  const before = await Promise.all(addrs.map((a) => w.balance(a)));
  const onChannel = before[1];
  r = await client.send({ to: ch, value: toNano('0.05'), body: body.closeFinal(fin) });
  const c = txOn(r, ch);
  assert.ok(c.success);
  const after = await conserved(w, addrs, before, r);
  assert.equal(after[1], 0n, 'nothing stays on the channel');
  const ps = await proxyState(w);
  assert.equal(ps.earned, toNano('1.2'));
  assert.equal(ps.open_clients, 0);
  // the client gets everything on the channel (its 4 TON balance and its leftover buffer, plus its 0.05 request)
  // except the final charge, the notification's value and every fee of the closing transactions
  const refund = c.outs.find((m) => m.info.dest.equals(client.address)).info.value.coins;
  const toProxy = c.outs.find((m) => m.info.dest.equals(w.proxy)).info.value.coins;
  assert.equal(toProxy, toNano('0.2') + FEE.notify);
  // value out = what was there − total fees − the forward fees the messages carry (README, "fees")
  assert.equal(refund, onChannel + toNano('0.05') - toProxy - c.tx.totalFees.coins
    - c.outs.reduce((s, m) => s + m.info.forwardFee, 0n));
  assert.ok(refund > toNano('3.8'), `${refund}`);
  // closed is final: no more deposits or charges
  r = await client.send({ to: ch, value: toNano('1'), body: body.deposit(0n) });
  assert.equal(txOn(r, ch).exitCode, ERR.bad_state);
});

test('channel: close before the delay fails; after it the client gets back its whole balance and stake while the proxy is gone', async () => {
  const w = await world();
  const { client, ch } = await open(w);
  const stranger = await w.bc.treasury('stranger');
  let r = await stranger.send({ to: ch, value: toNano('0.05'), body: body.requestClose() });
  assert.equal(txOn(r, ch).exitCode, ERR.unauthorized);
  r = await client.send({ to: ch, value: toNano('0.05'), body: body.requestClose() });
  assert.ok(txOn(r, ch).success);
  let s = await channelState(w, ch);
  assert.equal(s.state, 2);
  assert.equal(s.unlock_at, w.bc.now + w.params.client_close_delay);
  // no withdrawals or second requests while closing
  r = await client.send({ to: ch, value: toNano('0.05'), body: body.withdraw(toNano('1')) });
  assert.equal(txOn(r, ch).exitCode, ERR.bad_state);
  r = await client.send({ to: ch, value: toNano('0.05'), body: body.finalizeClose() });
  assert.equal(txOn(r, ch).exitCode, ERR.too_early);
  w.bc.now += w.params.client_close_delay - 1;
  r = await client.send({ to: ch, value: toNano('0.05'), body: body.finalizeClose() });
  assert.equal(txOn(r, ch).exitCode, ERR.too_early);
  w.bc.now += 1;
  // the proxy's operator is gone: nobody submits anything for it. The notification carries a fixed, sufficient value.
  const addrs = [client.address, ch, w.proxy];
  const before = await Promise.all(addrs.map((a) => w.balance(a)));
  r = await client.send({ to: ch, value: toNano('0.05'), body: body.finalizeClose() });
  const c = txOn(r, ch);
  assert.ok(c.success);
  const p = txOn(r, w.proxy);
  assert.ok(p.success, 'the proxy processed the notification');
  const after = await conserved(w, addrs, before, r);
  assert.equal(after[1], 0n, 'nothing stranded on the channel');
  assert.equal((await proxyState(w)).open_clients, 0, 'the proxy counts the channel closed');
  assert.equal((await proxyState(w)).earned, 0n);
  const refund = c.outs.find((m) => m.info.dest.equals(client.address)).info.value.coins;
  const notify = c.outs.find((m) => m.info.dest.equals(w.proxy)).info.value.coins;
  assert.equal(notify, FEE.notify);
  // balance 5 TON (stake 2 included) + buffer + this request's 0.05, minus the notification and the fees of this transaction
  const fwdFees = c.outs.reduce((x, m) => x + m.info.forwardFee, 0n);
  assert.equal(refund + notify + c.tx.totalFees.coins + fwdFees, before[1] + toNano('0.05'));
  assert.ok(refund >= toNano('5'), `client got ${refund}: its whole balance and stake`);
  s = await channelState(w, ch);
  assert.deepEqual(s, { state: 3, balance: 0n, stake: 0n, charged: 0n, seqno: 0n, unlock_at: w.bc.now });
});

test('channel: the proxy may still charge during the close delay, never after', async () => {
  const w = await world();
  const { client, ch } = await open(w);
  await client.send({ to: ch, value: toNano('0.05'), body: body.requestClose() });
  let r = await w.proxyOwner.send({ to: ch, value: toNano('0.05'), body: body.charge(voucher(w.proxyKey, TAG.charge, ch, 3, toNano('4.5'))) });
  assert.ok(txOn(r, ch).success);
  w.bc.now += w.params.client_close_delay;
  r = await client.send({ to: ch, value: toNano('0.05'), body: body.finalizeClose() });
  assert.ok(txOn(r, ch).success);
  r = await w.proxyOwner.send({ to: ch, value: toNano('0.05'), body: body.charge(voucher(w.proxyKey, TAG.charge, ch, 4, toNano('5'))) });
  assert.equal(txOn(r, ch).exitCode, ERR.bad_state);
  assert.equal((await proxyState(w)).earned, toNano('4.5'));
});

test('channel: a channel forged with other code or other parameters is not recognised by the proxy', async () => {
  const w = await world();
  // same code, but a close delay of 0: another address, which the proxy does not derive
  const client = await w.bc.treasury('client');
  const init = { code: CODE.client, data: clientInitData(w.proxy, client.address, w.proxyKey.publicKey, 0, 0, toNano('1')) };
  const ch = contractAddress(0, init);
  let r = await client.send({ to: ch, value: toNano('5'), init, body: body.deposit(toNano('1')) });
  assert.ok(txOn(r, ch).success);
  assert.equal(txOn(r, w.proxy).exitCode, ERR.not_child);
  // the refused registration bounced: the forged channel closed and returned everything to the client
  assert.equal(txOn(r, ch, 1).tx.inMessage.info.bounced, true);
  assert.equal((await channelState(w, ch)).state, 3);
  assert.equal(await w.balance(ch), 0n);
  assert.equal((await proxyState(w)).open_clients, 0);
  // another contract pretending to be a channel: its notices are refused
  const { ch: real } = await open(w, 'victim');
  const mallory = await w.bc.treasury('mallory');
  r = await mallory.send({ to: w.proxy, value: toNano('0.05'), body: body.notice(OP.client_closed, 0n, (await w.bc.treasury('victim')).address, 0) });
  assert.equal(txOn(r, w.proxy).exitCode, ERR.not_child);
  r = await mallory.send({ to: w.proxy, value: toNano('0.05'), body: body.notice(OP.client_charged, toNano('100'), mallory.address, 0) });
  assert.equal(txOn(r, w.proxy).exitCode, ERR.not_child);
  assert.equal((await proxyState(w)).open_clients, 1);
  assert.equal((await proxyState(w)).earned, 0n);
  assert.ok(real);
});

test('channel: a registration the proxy refuses (missing, or below its minimum stake) closes the channel and refunds it', async () => {
  const w = await world({ stake: toNano('1') });   // below min_proxy_stake: the proxy is not active
  const { client, ch, r } = await open(w);
  assert.equal(txOn(r, w.proxy).exitCode, ERR.bad_state);
  assert.equal((await channelState(w, ch)).state, 3);
  assert.equal(await w.balance(ch), 0n);
  assert.equal(undelivered(r).length, 0);
  const refund = txOn(r, ch, 1).outs[0];
  assert.ok(refund.info.dest.equals(client.address));
  assert.ok(refund.info.value.coins > toNano('5'), 'balance, stake and the unspent buffer');
  // a proxy address where nothing lives
  const ghost = contractAddress(0, { code: CODE.worker, data: beginCell().storeUint(1, 8).endCell() });
  const init = { code: CODE.client, data: clientInitData(ghost, client.address, w.proxyKey.publicKey, 1, 60, toNano('1')) };
  const gch = contractAddress(0, init);
  const r2 = await client.send({ to: gch, value: toNano('5') + FEE.deposit, init, body: body.deposit(toNano('1')) });
  assert.equal((await channelState(w, gch)).state, 3);
  assert.equal(await w.balance(gch), 0n);
  assert.equal(undelivered(r2).length, 0);
});

test('channel: a charge the proxy refuses bounces back into the client balance, and a newer voucher claims it', async () => {
  const w = await world();
  const refuserCode = await compileFixture('refuser');
  const refuserInit = { code: refuserCode, data: beginCell().endCell() };
  const refuser = contractAddress(0, refuserInit);
  await w.owner.send({ to: refuser, value: toNano('1'), init: refuserInit });
  const client = await w.bc.treasury('client');
  const init = { code: CODE.client, data: clientInitData(refuser, client.address, w.proxyKey.publicKey, 0, 60, toNano('1')) };
  const ch = contractAddress(0, init);
  await client.send({ to: ch, value: toNano('5') + FEE.deposit, init, body: body.deposit(toNano('1')) });
  assert.equal((await channelState(w, ch)).state, 1);
  const before = await w.balance(ch);
  const r = await w.proxyOwner.send({ to: ch, value: toNano('0.05'), body: body.charge(voucher(w.proxyKey, TAG.charge, ch, 1, toNano('2'))) });
  assert.equal(txOn(r, refuser).exitCode, 999);
  const bounce = txOn(r, ch, 1);
  assert.ok(bounce.success && bounce.tx.inMessage.info.bounced);
  assert.deepEqual(await channelState(w, ch), { state: 1, balance: toNano('5'), stake: toNano('1'), charged: 0n, seqno: 1n, unlock_at: 0 });
  // the channel got the charge back (the bounce's own fees were paid by the submitter's attached value)
  assert.ok((await w.balance(ch)) >= before, 'the channel lost nothing');
  // the old voucher is spent; a newer one for the same amount is accepted
  const r2 = await w.proxyOwner.send({ to: ch, value: toNano('0.05'), body: body.charge(voucher(w.proxyKey, TAG.charge, ch, 1, toNano('2'))) });
  assert.equal(txOn(r2, ch).exitCode, ERR.old_voucher);
});

test('channel: storage fees come out of the buffer, never out of the charges; close still empties the channel', async () => {
  const w = await world();
  const { client, ch } = await open(w);
  const b0 = await w.balance(ch);
  w.bc.now += 365 * 24 * 3600;   // a year idle
  const r = await w.proxyOwner.send({ to: ch, value: toNano('0.05'), body: body.charge(voucher(w.proxyKey, TAG.charge, ch, 1, toNano('1'))) });
  const c = txOn(r, ch);
  assert.ok(c.success);
  const storage = c.tx.description.storagePhase.storageFeesCollected;
  assert.ok(storage > 0n, 'a year of storage was charged');
  assert.equal(b0 - (await w.balance(ch)), toNano('1') + storage, 'the channel paid the charge and its rent, nothing else');
  assert.equal((await proxyState(w)).earned, toNano('1'));
  assert.ok(storage < b0 - toNano('5'), `rent ${storage} is below the buffer ${b0 - toNano('5')}`);
  const fin = await client.send({ to: ch, value: toNano('0.05'), body: body.closeFinal(voucher(w.proxyKey, TAG.final, ch, 2, toNano('1'))) });
  assert.ok(txOn(fin, ch).success);
  assert.equal(await w.balance(ch), 0n);
});

test('item 7: a voucher signed for another network (global id) is refused; the one for this network pays', async () => {
  const w = await world();
  const { client, ch } = await open(w);
  const send = (b) => w.proxyOwner.send({ to: ch, value: toNano('0.05'), body: b });
  // the same key, channel, seqno and amount, signed for the testnet (-3) and for a local network
  for (const globalId of [-3, 0x636f636f]) {
    let r = await send(body.charge(voucher(w.proxyKey, TAG.charge, ch, 1, toNano('1'), globalId)));
    assert.equal(txOn(r, ch).exitCode, ERR.bad_signature);
    r = await client.send({ to: ch, value: toNano('0.05'), body: body.closeFinal(voucher(w.proxyKey, TAG.final, ch, 1, toNano('1'), globalId)) });
    assert.equal(txOn(r, ch).exitCode, ERR.bad_signature);
  }
  assert.deepEqual(await channelState(w, ch), { state: 1, balance: toNano('5'), stake: toNano('2'), charged: 0n, seqno: 0n, unlock_at: 0 });
  const r = await send(body.charge(voucher(w.proxyKey, TAG.charge, ch, 1, toNano('1'), GLOBAL_ID)));
  assert.ok(txOn(r, ch).success);
  assert.equal((await channelState(w, ch)).charged, toNano('1'));
});

test('item 9: a forged bounce cannot hand a charge back to the client\'s balance', async () => {
  const w = await world();
  const { client, ch } = await open(w);
  let r = await w.proxyOwner.send({ to: ch, value: toNano('0.05'), body: body.charge(voucher(w.proxyKey, TAG.charge, ch, 1, toNano('1'))) });
  assert.ok(txOn(r, ch).success);
  const charged = await channelState(w, ch);
  // what the proxy's refusal of that charge would look like, sent by the client (where a chain lets anyone set the
  // bounced flag, as a test chain might): the channel only believes bounces from its proxy
  const forged = beginCell().storeUint(0xffffffff, 32).store((b) => b.storeBits(body.notice(OP.client_charged, toNano('1'), client.address, 0).beginParse().loadBits(256))).endCell();
  r = await w.bc.sendMessage(internal({ from: client.address, to: ch, value: toNano('0.05'), bounce: false, bounced: true, body: forged }));
  assert.ok(txOn(r, ch).tx.inMessage.info.bounced);
  assert.deepEqual(await channelState(w, ch), charged, 'nothing changed');
  // the forged "registration refused" does not close an open channel either
  const opened = beginCell().storeUint(0xffffffff, 32).storeUint(OP.client_opened, 32).storeUint(0, 64).storeCoins(0).endCell();
  r = await w.bc.sendMessage(internal({ from: client.address, to: ch, value: toNano('0.05'), bounce: false, bounced: true, body: opened }));
  assert.equal((await channelState(w, ch)).state, 1);
  // the genuine proxy's next claim is still exactly the difference
  r = await w.proxyOwner.send({ to: ch, value: toNano('0.05'), body: body.charge(voucher(w.proxyKey, TAG.charge, ch, 2, toNano('1.5'))) });
  assert.ok(txOn(r, ch).success);
  assert.equal((await proxyState(w)).earned, toNano('1.5'));
  assert.equal((await channelState(w, ch)).balance, toNano('3.5'));
});
