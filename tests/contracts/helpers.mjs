// Builders for every message and storage layout in src/cocoon/contracts/README.md, a sandbox world with a
// root, a registered and staked proxy, and fee accounting. The Python side mirrors these builders.
import { Blockchain } from '@ton/sandbox';
import { beginCell, Cell, contractAddress, Dictionary, toNano } from '@ton/core';
import { keyPairFromSeed, sign } from '@ton/crypto';
import { createHash } from 'node:crypto';
import { loadCode } from '../../src/cocoon/contracts/compile.mjs';

export const OP = {
  root_set_params: 0x52000001, root_set_hash: 0x52000002, root_set_codes: 0x52000003,
  root_register_proxy: 0x52000004, root_unregister_proxy: 0x52000005, root_set_owner: 0x52000006,
  root_sign_head: 0x52000007, root_set_log_key: 0x52000008,
  proxy_deploy: 0x50000001, proxy_add_stake: 0x50000002, proxy_commit: 0x50000003,
  proxy_start_close: 0x50000004, proxy_withdraw: 0x50000005,
  client_opened: 0x50000011, client_charged: 0x50000012, client_closed: 0x50000013,
  payout_request: 0x50000021, payout: 0x50000022, proxy_withdrawn: 0x50000023,
  deposit: 0x43000001, withdraw: 0x43000002, charge: 0x43000003, close_final: 0x43000004,
  request_close: 0x43000005, finalize_close: 0x43000006, refund: 0x43000007,
  redeem: 0x57000001,
};
export const TAG = { charge: 0x63686172, final: 0x66696e6c, payout: 0x7061796f, tree_head: 0x74726565 };
export const ERR = {
  unknown_op: 100, unauthorized: 101, bad_signature: 102, old_voucher: 103, insufficient_balance: 104,
  below_stake: 105, too_early: 106, bad_state: 107, not_child: 108, low_value: 109, stake_too_low: 110,
  open_channels: 111, no_funds: 112, bad_params: 113,
};
export const FEE = { min_op_value: 20_000_000n, deposit: 50_000_000n, notify: 10_000_000n };

export const CODE = {
  root: loadCode('root'), proxy: loadCode('proxy'),
  client: loadCode('client_channel'), worker: loadCode('worker_channel'),
};

export const DEFAULT_PARAMS = {
  price_per_token: 20n, worker_fee_per_token: 16n,
  prompt: 1000, cached: 100, completion: 4000, reasoning: 4000,
  client_close_delay: 3600, proxy_close_delay: 86400,
  min_client_stake: toNano('1'), min_proxy_stake: toNano('10'),
  max_coefficient: 10000,
  price_per_media_second: 20000n, worker_fee_per_media_second: 16000n,
};

// The global id (ConfigParam 19) of the sandbox's default config, a mainnet snapshot: what vouchers bind here.
export const GLOBAL_ID = -239;

export function keyPair(name) {
  return keyPairFromSeed(createHash('sha256').update(`cocoon-test-key:${name}`).digest());
}

// ---- storage ----
// Media prices are the optional tail of Params: left out when `p` has none (the layout before media was priced).
export function paramsCell(p = DEFAULT_PARAMS) {
  const b = beginCell().storeCoins(p.price_per_token).storeCoins(p.worker_fee_per_token)
    .storeUint(p.prompt, 32).storeUint(p.cached, 32).storeUint(p.completion, 32).storeUint(p.reasoning, 32)
    .storeUint(p.client_close_delay, 32).storeUint(p.proxy_close_delay, 32)
    .storeCoins(p.min_client_stake).storeCoins(p.min_proxy_stake).storeUint(p.max_coefficient, 32);
  if (p.price_per_media_second !== undefined) {
    b.storeCoins(p.price_per_media_second).storeCoins(p.worker_fee_per_media_second);
  }
  return b.endCell();
}

export function codesCell(codes = CODE) {
  return beginCell().storeRef(codes.proxy).storeRef(codes.client).storeRef(codes.worker).endCell();
}

// the registry log before its first entry: key, size 0, the empty tree's root, nothing signed, no frontier or entries
export const EMPTY_ROOT = createHash('sha256').update(Buffer.alloc(0)).digest();
export function emptyLog(key) {
  return beginCell().storeBuffer(key, 32).storeUint(0, 64).storeBuffer(EMPTY_ROOT).storeUint(0, 64)
    .storeBuffer(EMPTY_ROOT).storeMaybeRef(null).storeDict(null).storeDict(null).endCell();
}

export function rootData(owner, params = DEFAULT_PARAMS, codes = CODE, logKey = keyPair('root-log').publicKey) {
  const registry = beginCell().storeUint(0, 4).endCell();   // four empty HashmapE
  return beginCell().storeAddress(owner).storeUint(0, 32).storeRef(paramsCell(params)).storeRef(codesCell(codes))
    .storeRef(registry).storeRef(emptyLog(logKey)).endCell();
}

// ---- the registry log (RFC 6962/9162 hashing) ----
const sha256 = (...parts) => createHash('sha256').update(Buffer.concat(parts)).digest();
export const leafHash = (data) => sha256(Buffer.from([0]), data);
export const nodeHash = (l, r) => sha256(Buffer.from([1]), l, r);
/** MTH over leaf hashes: the root of the tree of these leaves. */
export function merkleRoot(leaves) {
  if (leaves.length === 0) return EMPTY_ROOT;
  if (leaves.length === 1) return leaves[0];
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return nodeHash(merkleRoot(leaves.slice(0, k)), merkleRoot(leaves.slice(k)));
}
/** The log entry a root change message's body becomes at `version`: version, op, the fields after query_id. */
export function logEntry(version, changeBody) {
  const s = changeBody.beginParse();
  const op = s.loadUint(32);
  s.loadUintBig(64);
  return beginCell().storeUint(version, 32).storeUint(op, 32).storeSlice(s).endCell();
}
export function treeHeadCell(root, size, rootHash, globalId = GLOBAL_ID) {
  return beginCell().storeUint(TAG.tree_head, 32).storeInt(globalId, 32).storeAddress(root).storeUint(size, 64)
    .storeBuffer(rootHash, 32).endCell();
}

export function proxyInitData(root, owner, pubkey, params, rootVersion, codes = CODE) {
  const ident = beginCell().storeAddress(root).storeAddress(owner).storeBuffer(pubkey, 32).endCell();
  const pparams = beginCell().storeUint(params.client_close_delay, 32).storeUint(params.proxy_close_delay, 32)
    .storeCoins(params.min_client_stake).storeCoins(params.min_proxy_stake).storeUint(rootVersion, 32).endCell();
  const pcodes = beginCell().storeRef(codes.client).storeRef(codes.worker).endCell();
  return beginCell().storeUint(0, 2).storeCoins(0).storeCoins(0).storeCoins(0)
    .storeUint(0, 32).storeUint(0, 32).storeUint(0, 64).storeUint(0, 256)
    .storeRef(ident).storeRef(pparams).storeRef(pcodes).endCell();
}

export function clientInitData(proxy, client, pubkey, nonce, closeDelay, minStake) {
  const ident = beginCell().storeAddress(proxy).storeAddress(client).storeBuffer(pubkey, 32).storeUint(nonce, 32)
    .storeUint(closeDelay, 32).storeCoins(minStake).endCell();
  return beginCell().storeUint(0, 2).storeCoins(0).storeCoins(0).storeCoins(0).storeUint(0, 64).storeUint(0, 32)
    .storeRef(ident).endCell();
}

export function workerInitData(proxy, worker, pubkey) {
  const ident = beginCell().storeAddress(proxy).storeAddress(worker).storeBuffer(pubkey, 32).endCell();
  return beginCell().storeUint(0, 64).storeCoins(0).storeRef(ident).endCell();
}

export function stateInit(code, data) {
  return { code, data };
}

// ---- message bodies ----
const head = (op, q = 0n) => beginCell().storeUint(op, 32).storeUint(q, 64);
export const body = {
  setParams: (p, q) => head(OP.root_set_params, q).storeRef(paramsCell(p)).endCell(),
  setHash: (kind, hash, present, q) => head(OP.root_set_hash, q).storeUint(kind, 8).storeBuffer(hash, 32)
    .storeBit(present).endCell(),
  setCodes: (codes, q) => head(OP.root_set_codes, q).storeRef(codesCell(codes)).endCell(),
  registerProxy: (owner, pubkey, endpoint, q) => head(OP.root_register_proxy, q).storeAddress(owner)
    .storeBuffer(pubkey, 32).storeRef(beginCell().storeStringTail(endpoint).endCell()).endCell(),
  unregisterProxy: (addr, q) => head(OP.root_unregister_proxy, q).storeBuffer(addr.hash, 32).endCell(),
  setOwner: (owner, q) => head(OP.root_set_owner, q).storeAddress(owner).endCell(),
  signHead: (size, rootHash, signature, q) => head(OP.root_sign_head, q).storeUint(size, 64).storeBuffer(rootHash, 32)
    .storeRef(beginCell().storeBuffer(signature, 64).endCell()).endCell(),
  setLogKey: (key, q) => head(OP.root_set_log_key, q).storeBuffer(key, 32).endCell(),
  addStake: (q) => head(OP.proxy_add_stake, q).endCell(),
  commit: (seqno, hash, q) => head(OP.proxy_commit, q).storeUint(seqno, 64).storeBuffer(hash, 32).endCell(),
  startClose: (q) => head(OP.proxy_start_close, q).endCell(),
  proxyWithdraw: (q) => head(OP.proxy_withdraw, q).endCell(),
  deposit: (stakeRaise, q) => head(OP.deposit, q).storeCoins(stakeRaise).endCell(),
  withdraw: (amount, q) => head(OP.withdraw, q).storeCoins(amount).endCell(),
  charge: (v, q) => head(OP.charge, q).storeUint(v.seqno, 64).storeCoins(v.amount).storeBuffer(v.signature).endCell(),
  closeFinal: (v, q) => head(OP.close_final, q).storeUint(v.seqno, 64).storeCoins(v.amount).storeBuffer(v.signature).endCell(),
  requestClose: (q) => head(OP.request_close, q).endCell(),
  finalizeClose: (q) => head(OP.finalize_close, q).endCell(),
  redeem: (v, q) => head(OP.redeem, q).storeUint(v.seqno, 64).storeCoins(v.amount).storeBuffer(v.signature).endCell(),
  // what a channel sends its proxy; tests forge these from other contracts
  notice: (op, amount, client, nonce, q) => head(op, q).storeCoins(amount).storeAddress(client).storeUint(nonce, 32).endCell(),
  payoutRequest: (amount, worker, q) => head(OP.payout_request, q).storeCoins(amount).storeAddress(worker).endCell(),
};

// ---- vouchers ----
export function voucherCell(tag, contract, seqno, amount, globalId = GLOBAL_ID) {
  return beginCell().storeUint(tag, 32).storeInt(globalId, 32).storeAddress(contract).storeUint(seqno, 64)
    .storeCoins(amount).endCell();
}
/** A voucher signed for the network `globalId` (the sandbox's by default). */
export function voucher(kp, tag, contract, seqno, amount, globalId = GLOBAL_ID) {
  seqno = BigInt(seqno); amount = BigInt(amount);
  return { seqno, amount, signature: sign(voucherCell(tag, contract, seqno, amount, globalId).hash(), kp.secretKey) };
}

// ---- transactions ----
/** The compute-phase exit code and the outcome of the first transaction on `addr` in a send result. */
export function txOn(result, addr, nth = 0) {
  const txs = result.transactions.filter((t) => t.inMessage?.info.dest?.equals?.(addr));
  const tx = txs[nth];
  if (!tx) throw new Error(`no transaction on ${addr}`);
  const d = tx.description;
  return {
    tx,
    exitCode: d.computePhase.type === 'vm' ? d.computePhase.exitCode : null,
    success: d.computePhase.type === 'vm' && d.computePhase.success && !d.aborted,
    aborted: d.aborted,
    gasUsed: d.computePhase.type === 'vm' ? d.computePhase.gasUsed : 0n,
    outs: [...tx.outMessages.values()],
  };
}

/** Fees of an operation: every transaction's total fees plus the forward fees of the messages between them. */
export function feesOf(result) {
  let total = 0n;
  for (const t of result.transactions) {
    total += t.totalFees.coins;
    if (t.inMessage?.info.type === 'internal') total += t.inMessage.info.forwardFee;
  }
  return total;
}

/** Internal messages of a send result that nobody received (e.g. bounces of bounces). */
export function undelivered(result) {
  return result.transactions.flatMap((t) => [...t.outMessages.values()])
    .filter((m) => m.info.type === 'internal')
    .filter((m) => !result.transactions.some((t) => t.inMessage && t.inMessage.info.type === 'internal' &&
      t.inMessage.info.createdLt === m.info.createdLt && t.inMessage.info.dest.equals(m.info.dest)));
}

// ---- a world: root, owner, registered and staked proxy ----
export const T0 = 1_800_000_000;

export async function world({ params = DEFAULT_PARAMS, stake = toNano('10') } = {}) {
  const bc = await Blockchain.create();
  bc.now = T0;
  const owner = await bc.treasury('root-owner');
  const proxyOwner = await bc.treasury('proxy-owner');
  const rootInit = { code: CODE.root, data: rootData(owner.address, params) };
  const root = contractAddress(0, rootInit);
  let r = await owner.send({ to: root, value: toNano('1'), init: rootInit, body: body.setHash(3, Buffer.alloc(32, 7), true) });
  const w = { bc, owner, proxyOwner, root, params, results: { rootDeploy: r } };
  const proxyKey = keyPair('proxy');
  w.proxyKey = proxyKey;
  const version = 1;   // one change (the model hash) since deployment
  const proxyInit = { code: CODE.proxy, data: proxyInitData(root, proxyOwner.address, proxyKey.publicKey, params, version) };
  w.proxy = contractAddress(0, proxyInit);
  w.results.register = await owner.send({ to: root, value: toNano('0.5'),
    body: body.registerProxy(proxyOwner.address, proxyKey.publicKey, 'proxy.example:8443') });
  if (stake > 0n) {
    w.results.stake = await proxyOwner.send({ to: w.proxy, value: stake + FEE.deposit, body: body.addStake() });
  }
  w.clientInit = (client, nonce = 0) => ({
    code: CODE.client,
    data: clientInitData(w.proxy, client, proxyKey.publicKey, nonce, params.client_close_delay, params.min_client_stake),
  });
  w.workerInit = (worker) => ({ code: CODE.worker, data: workerInitData(w.proxy, worker, proxyKey.publicKey) });
  w.balance = async (addr) => (await bc.getContract(addr)).balance;
  w.get = async (addr, method, stack = []) => (await bc.getContract(addr)).get(method, stack);
  return w;
}

export async function proxyState(w) {
  const r = (await w.get(w.proxy, 'get_proxy_state')).stackReader;
  return { status: r.readNumber(), stake: r.readBigNumber(), earned: r.readBigNumber(), paid_out: r.readBigNumber(),
    open_clients: r.readNumber(), close_at: r.readNumber() };
}

export async function channelState(w, addr) {
  const r = (await w.get(addr, 'get_channel_state')).stackReader;
  return { state: r.readNumber(), balance: r.readBigNumber(), stake: r.readBigNumber(), charged: r.readBigNumber(),
    seqno: r.readBigNumber(), unlock_at: r.readNumber() };
}

export async function workerState(w, addr) {
  const r = (await w.get(addr, 'get_worker_state')).stackReader;
  return { seqno: r.readBigNumber(), paid: r.readBigNumber() };
}

export { toNano, beginCell, Cell, contractAddress, Dictionary };

/** Compiles a test-only contract from tests/contracts/fixtures (never committed as a BOC). */
export async function compileFixture(name) {
  const { compileFunc } = await import('@ton-community/func-js');
  const { readFileSync } = await import('node:fs');
  const dir = new URL('./fixtures/', import.meta.url);
  const res = await compileFunc({ targets: [`${name}.fc`], sources: (p) => readFileSync(new URL(p, dir), 'utf8') });
  if (res.status !== 'ok') throw new Error(res.message);
  return Cell.fromBoc(Buffer.from(res.codeBoc, 'base64'))[0];
}
