// The committed BOCs and hashes are what the sources compile to.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { CONTRACTS, compileContract, loadCode } from '../../src/cocoon/contracts/compile.mjs';

test('build: every committed BOC and hash matches its FunC source', async () => {
  const hashes = JSON.parse(readFileSync(new URL('../../src/cocoon/contracts/build/hashes.json', import.meta.url), 'utf8'));
  for (const name of CONTRACTS) {
    const fresh = (await compileContract(name)).hash().toString('hex');
    assert.equal(loadCode(name).hash().toString('hex'), fresh, `${name}.boc is stale: node src/cocoon/contracts/compile.mjs`);
    assert.equal(hashes.contracts[name], fresh, `hashes.json is stale for ${name}`);
  }
});
