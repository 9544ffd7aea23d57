// One raw-token measurement in a process of its own: the emulated network HSM (softhsm/netsim) reads its delay once per
// process, so each delay gets a fresh process. Argument: JSON { module, tokenLabel, pin, environment, caseName,
// keyLabel, sessions, seconds, signer }. Prints one line of JSON: what openRawToken's measure() returned.
import pkcs11js from 'pkcs11js';
import { benchCases } from './common.mjs';
import { openRawToken } from './raw-token.mjs';

const spec = JSON.parse(process.argv[2]);
const c = benchCases(pkcs11js, { sm2: false }).find((x) => x.name === spec.caseName);
const token = await openRawToken({ module: spec.module, tokenLabel: spec.tokenLabel, pin: spec.pin, environment: spec.environment, sessions: spec.sessions, signer: spec.signer });
const key = token.findKey(spec.keyLabel);
await token.measure(c, key, spec.sessions, 0.5); // warm-up
const result = await token.measure(c, key, spec.sessions, spec.seconds);
token.close();
console.log(JSON.stringify(result));
