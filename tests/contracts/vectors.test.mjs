// Shared test vectors: one scripted life of every contract, transaction by transaction, recorded as the exact
// account state before, the inbound message, and what must come out. The Python side replays them in pytvm's
// transaction emulator with vectors/config.boc. COCOON_WRITE_VECTORS=1 rewrites them; otherwise this test
// fails when the contracts no longer produce the committed vectors. Also records each operation's fees.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { internal } from '@ton/sandbox';
import { beginCell, storeMessage, storeAccountStorage } from '@ton/core';
import { world, body, voucher, TAG, FEE, contractAddress, toNano, CODE } from './helpers.mjs';

const DIR = new URL('../../src/cocoon/contracts/vectors/', import.meta.url);
const b64 = (cell) => cell.toBoc().toString('base64');

// The emulator in pytvm 0.0.14 predates the StorageInfo change (storage_extra, no public_cells): write accounts in
// the layout it reads. account$1 addr storage_stat:(cells bits public_cells:VarUInteger 7, last_paid:uint32,
// due_payment:Maybe Coins) storage:(last_trans_lt:uint64 balance:CurrencyCollection state:AccountState)
function legacyShardAccount(sa) {
  const b = beginCell();
  const a = sa.account;
  if (!a) {
    b.storeBit(0);
  } else {
    const u = a.storageStats;
    b.storeBit(1).storeAddress(a.addr)
      .storeVarUint(u.used.cells, 3).storeVarUint(u.used.bits, 3).storeVarUint(0, 3)
      .storeUint(u.lastPaid, 32).storeMaybeCoins(u.duePayment ?? null)
      .store(storeAccountStorage(a.storage));
  }
  return beginCell().storeRef(b.endCell()).storeUint(sa.lastTransactionHash, 256).storeUint(sa.lastTransactionLt, 64).endCell();
}

test('vectors: the committed vectors and fee table match what the contracts do now', async () => {
  const w = await world();
  const client = await w.bc.treasury('client');
  const worker = await w.bc.treasury('worker');
  const cInit = w.clientInit(client.address);
  const ch = contractAddress(0, cInit);
  const wInit = w.workerInit(worker.address);
  const wc = contractAddress(0, wInit);
  const ours = new Map([[w.root.toRawString(), 'root'], [w.proxy.toRawString(), 'proxy'],
    [ch.toRawString(), 'client_channel'], [wc.toRawString(), 'worker_channel']]);
  const vectors = [];
  const fees = {};

  async function step(name, msg) {
    let total = 0n;
    const iter = await w.bc.sendMessageIter(internal(msg));
    for (;;) {
      const before = {};
      for (const raw of ours.keys()) {
        const sc = await w.bc.getContract(ours.get(raw) === 'root' ? w.root : raw === w.proxy.toRawString() ? w.proxy : raw === ch.toRawString() ? ch : wc);
        before[raw] = { account: b64(legacyShardAccount(sc.account)), balance: sc.balance,
          data: sc.accountState?.type === 'active' ? b64(sc.accountState.state.data) : null };
      }
      const { value: tx, done } = await iter.next();
      if (done) break;
      total += tx.totalFees.coins + (tx.inMessage.info.type === 'internal' ? tx.inMessage.info.forwardFee : 0n);
      const raw = tx.inMessage.info.dest.toRawString();
      const contract = ours.get(raw);
      if (!contract) continue;
      const d = tx.description;
      const after = await w.bc.getContract(tx.inMessage.info.dest);
      vectors.push({
        step: name, contract, address: raw, code_hash: CODE[contract === 'client_channel' ? 'client' : contract === 'worker_channel' ? 'worker' : contract].hash().toString('hex'),
        now: tx.now, lt: tx.lt.toString(),
        shard_account_before: before[raw].account, data_before: before[raw].data, balance_before: before[raw].balance.toString(),
        in_msg: b64(beginCell().store(storeMessage(tx.inMessage)).endCell()),
        exit_code: d.computePhase.type === 'vm' ? d.computePhase.exitCode : null,
        aborted: d.aborted, gas_used: d.computePhase.type === 'vm' ? d.computePhase.gasUsed.toString() : '0',
        total_fees: tx.totalFees.coins.toString(),
        data_after: after.accountState?.type === 'active' ? b64(after.accountState.state.data) : null,
        balance_after: after.balance.toString(),
        out_msgs: [...tx.outMessages.values()].map((m) => ({
          dest: m.info.dest.toRawString(), value: m.info.value.coins.toString(), bounce: m.info.bounce, body: b64(m.body),
        })),
      });
    }
    fees[name] = total.toString();
  }

  await step('proxy.add_stake', { from: w.proxyOwner.address, to: w.proxy, value: toNano('1') + FEE.deposit, body: body.addStake() });
  await step('proxy.commit', { from: w.proxyOwner.address, to: w.proxy, value: FEE.min_op_value, body: body.commit(1n, Buffer.alloc(32, 0x5a)) });
  await step('channel.open (deploy + deposit + register)', { from: client.address, to: ch, value: toNano('5') + FEE.deposit, stateInit: cInit, body: body.deposit(toNano('2')) });
  await step('channel.deposit', { from: client.address, to: ch, value: toNano('1') + FEE.deposit, body: body.deposit(0n) });
  await step('channel.withdraw', { from: client.address, to: ch, value: FEE.min_op_value, body: body.withdraw(toNano('1')) });
  await step('channel.charge', { from: w.proxyOwner.address, to: ch, value: FEE.min_op_value, body: body.charge(voucher(w.proxyKey, TAG.charge, ch, 1, toNano('1'))) });
  await step('channel.charge (replayed: refused)', { from: w.proxyOwner.address, to: ch, value: FEE.min_op_value, body: body.charge(voucher(w.proxyKey, TAG.charge, ch, 1, toNano('1'))) });
  await step('worker.redeem (deploy)', { from: worker.address, to: wc, value: FEE.min_op_value, stateInit: wInit, body: body.redeem(voucher(w.proxyKey, TAG.payout, wc, 1, toNano('0.5'))) });
  await step('worker.redeem', { from: worker.address, to: wc, value: FEE.min_op_value, body: body.redeem(voucher(w.proxyKey, TAG.payout, wc, 2, toNano('0.8'))) });
  await step('channel.request_close', { from: client.address, to: ch, value: FEE.min_op_value, body: body.requestClose() });
  await step('channel.finalize_close (too early: refused)', { from: client.address, to: ch, value: FEE.min_op_value, body: body.finalizeClose() });
  w.bc.now += w.params.client_close_delay;
  await step('channel.finalize_close', { from: client.address, to: ch, value: FEE.min_op_value, body: body.finalizeClose() });
  await step('proxy.start_close', { from: w.proxyOwner.address, to: w.proxy, value: FEE.min_op_value, body: body.startClose() });
  w.bc.now += w.params.proxy_close_delay;
  await step('proxy.withdraw', { from: w.proxyOwner.address, to: w.proxy, value: FEE.min_op_value, body: body.proxyWithdraw() });
  // a second world for the immediate close with a final voucher
  const fin = await world();
  const c2 = await fin.bc.treasury('client');
  const i2 = fin.clientInit(c2.address);
  const ch2 = contractAddress(0, i2);
  await fin.bc.sendMessage(internal({ from: c2.address, to: ch2, value: toNano('5') + FEE.deposit, stateInit: i2, body: body.deposit(toNano('2')) }));
  const r = await fin.bc.sendMessage(internal({ from: c2.address, to: ch2, value: FEE.min_op_value, body: body.closeFinal(voucher(fin.proxyKey, TAG.final, ch2, 1, toNano('1'))) }));
  fees['channel.close_final'] = r.transactions.reduce((s, t) => s + t.totalFees.coins + (t.inMessage.info.type === 'internal' ? t.inMessage.info.forwardFee : 0n), 0n).toString();
  for (const [k, res] of Object.entries(w.results)) {
    fees[{ rootDeploy: 'root.deploy (+ set_hash)', register: 'root.register_proxy (deploys the proxy)', stake: 'proxy.add_stake (first)' }[k]] =
      res.transactions.filter((t) => t.inMessage.info.type === 'internal').reduce((s, t) => s + t.totalFees.coins + (t.inMessage.info.type === 'internal' ? t.inMessage.info.forwardFee : 0n), 0n).toString();
  }

  const out = {
    lifecycle: { description: 'one life of every contract; replay each entry in order (transaction emulator, config.boc, the entry\'s now and lt)', vectors },
    fees: { description: 'total fees of each operation in nanoTON: every transaction\'s total_fees plus the forward fees of the internal messages it caused, from the sender wallet outgoing message on (the wallet transaction itself excluded; sandbox @ton/sandbox 0.41.0 default config = mainnet basechain prices)', fees },
  };
  const files = {
    'lifecycle.json': JSON.stringify(out.lifecycle, null, 1) + '\n',
    'fees.json': JSON.stringify(out.fees, null, 1) + '\n',
  };
  if (process.env.COCOON_WRITE_VECTORS === '1') {
    for (const [f, text] of Object.entries(files)) writeFileSync(new URL(f, DIR), text);
    writeFileSync(new URL('config.boc', DIR), w.bc.config.toBoc());
  } else {
    for (const [f, text] of Object.entries(files)) {
      assert.ok(existsSync(new URL(f, DIR)), `${f} missing: COCOON_WRITE_VECTORS=1 node --test tests/contracts/`);
      assert.equal(readFileSync(new URL(f, DIR), 'utf8'), text, `${f} is stale: COCOON_WRITE_VECTORS=1 node --test tests/contracts/`);
    }
  }
});
