// Loaded into gateway processes with NODE_OPTIONS=--import (registry-replicas-cas.test.ts): the n-th registry change
// of each process waits, after writing its objects and before its look, until each of HSMGW_CAS_PARTIES processes has
// written its n-th change, so that both write before either looks — the interleaving a race only sometimes gives.
// On odd rounds the looks are ordered as well: the process with HSMGW_CAS_ROLE=second looks only once the one with
// HSMGW_CAS_ROLE=first has finished its change. A party that never arrives releases the others after 10 s.
// The round is the number in the file `round` when the test writes one (cas-replicas.ts setRound), so that a change
// that fails before its look (a 503) does not shift one process's count against the other's; else each process counts.
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.env.HSMGW_CAS_BARRIER_DIR;
const parties = Number(process.env.HSMGW_CAS_PARTIES ?? 2);
const role = process.env.HSMGW_CAS_ROLE;
const { RegistryObjects } = await import(new URL('../../dist/keys/registry-objects.js', import.meta.url).href);
const lookAgain = RegistryObjects.prototype.lookAgain;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
let round = 0;
if (process.env.HSMGW_CAS_MODE === 'window') {
  // registry-cas-window.test.ts: the process with HSMGW_CAS_ROLE=first looks, then holds its commit until the other
  // has looked; the test starts the other's change once the first has looked (file `first-looked-<n>`). So the
  // second's change reads, writes and looks while the first's pending object is on the token, uncommitted.
  RegistryObjects.prototype.lookAgain = async function (...args) {
    const n = round++;
    const result = await lookAgain.apply(this, args);
    writeFileSync(join(dir, `${role}-looked-${n}`), '');
    if (role === 'first') {
      const deadline = Date.now() + 10_000;
      while (!existsSync(join(dir, `second-looked-${n}`)) && Date.now() < deadline) await sleep(10);
    }
    return result;
  };
} else RegistryObjects.prototype.lookAgain = async function (...args) {
  const set = join(dir, 'round');
  const n = existsSync(set) ? Number(readFileSync(set, 'utf8')) : round++;
  writeFileSync(join(dir, `${n}-${process.pid}`), '');
  const deadline = Date.now() + 10_000;
  while (readdirSync(dir).filter((f) => f.startsWith(`${n}-`)).length < parties && Date.now() < deadline) await sleep(10);
  const ordered = n % 2 === 1;
  if (ordered && role === 'second') while (!existsSync(join(dir, `done-${n}`)) && Date.now() < deadline) await sleep(10);
  const result = await lookAgain.apply(this, args);
  // The change's discard or commit follows within this turn of the event loop (microtasks: the store gate's hold,
  // then compareAndSwap's continuation): done once it has run.
  if (ordered && role === 'first') setImmediate(() => writeFileSync(join(dir, `done-${n}`), ''));
  return result;
};
