// Compiles cocoon's FunC contracts into build/<name>.boc (binary BOC of the code cell) and build/hashes.json.
//   node src/cocoon/contracts/compile.mjs          rebuild
//   node src/cocoon/contracts/compile.mjs --check  recompile in memory; exit 1 if a committed BOC or hash differs
import { readFileSync, writeFileSync, existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { compileFunc, compilerVersion } from '@ton-community/func-js';
import { Cell } from '@ton/core';

const here = dirname(fileURLToPath(import.meta.url));
const funcDir = join(here, 'func');
const buildDir = join(here, 'build');
export const CONTRACTS = ['root', 'proxy', 'client_channel', 'worker_channel'];

export async function compileContract(name) {
  const result = await compileFunc({
    targets: [`${name}.fc`],
    sources: (path) => readFileSync(join(funcDir, path), 'utf8'),
  });
  if (result.status !== 'ok') {
    throw new Error(`${name}.fc: ${result.message}`);
  }
  return Cell.fromBoc(Buffer.from(result.codeBoc, 'base64'))[0];
}

/** The committed code cell of a contract (what tests and the Python side run). */
export function loadCode(name) {
  return Cell.fromBoc(readFileSync(join(buildDir, `${name}.boc`)))[0];
}

async function main() {
  const check = process.argv.includes('--check');
  const { funcVersion } = await compilerVersion();
  const hashes = { compiler: `func ${funcVersion} (@ton-community/func-js 0.11.0)`, contracts: {} };
  let stale = [];
  for (const name of CONTRACTS) {
    const code = await compileContract(name);
    const hash = code.hash().toString('hex');
    hashes.contracts[name] = hash;
    const bocPath = join(buildDir, `${name}.boc`);
    if (check) {
      const committed = existsSync(bocPath) ? loadCode(name).hash().toString('hex') : null;
      if (committed !== hash) stale.push(`${name}: source compiles to ${hash}, committed BOC is ${committed}`);
    } else {
      mkdirSync(buildDir, { recursive: true });
      writeFileSync(bocPath, code.toBoc({ idx: false, crc32: true }));
      console.log(`${name.padEnd(16)} ${hash}  ${code.bits.length} bits root, build/${name}.boc`);
    }
  }
  const hashesPath = join(buildDir, 'hashes.json');
  const text = JSON.stringify(hashes, null, 2) + '\n';
  if (check) {
    if (!existsSync(hashesPath) || readFileSync(hashesPath, 'utf8') !== text) stale.push('build/hashes.json differs');
    if (stale.length) {
      console.error('contracts out of date (run `node src/cocoon/contracts/compile.mjs`):\n  ' + stale.join('\n  '));
      process.exit(1);
    }
    console.log('contracts: committed BOCs and hashes match their sources');
  } else {
    writeFileSync(hashesPath, text);
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  await main();
}
