#!/usr/bin/env node
// Mutation check of the PKCS#11 failure model: deletes or bends one rule at a time in src/hsm/ and runs the
// failure-model unit tests; every mutant must be killed (a test fails). Not part of `npm test` (it runs the file
// once per mutant, ~2 s each): `node test/mutation/failure-model.mjs`.
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';

const TEST = 'test/unit/token-failure-model.test.ts';
const M = [
  ['failure-model.ts', "case 'data':\n      // A failed C_SignInit/C_VerifyInit starts no operation and a failed C_Sign/C_Verify ends it (PKCS#11 §5.2),\n      // so the session is clean. (CKR_BUFFER_TOO_SMALL keeps the operation open: it is classed 'session'.)\n      return { session: 'keep'", "case 'data':\n      return { session: 'replace'", 'data error: replace the session instead of keeping it'],
  ['failure-model.ts', "new HsmOperationError('token refused the operation', ckr, { cause: err })", "new HsmOperationError('token refused the operation', ckr, { cause: err, retryable: true })", 'data error: retried'],
  ['failure-model.ts', "new HsmOperationError('session failure', ckr, { cause: err, retryable: true })", "new HsmOperationError('session failure', ckr, { cause: err })", 'session error: not retried'],
  ['failure-model.ts', "case 'session':\n      return { session: 'replace'", "case 'session':\n      return { session: 'keep'", 'session error: session kept'],
  ['failure-model.ts', "return { session: 'replace', dropHandles: true, token: 'probe'", "return { session: 'replace', dropHandles: false, token: 'probe'", 'stale handle: cache not dropped'],
  ['failure-model.ts', "new HsmOperationError('stale object handle', ckr, { cause: err, retryable: true })", "new HsmOperationError('stale object handle', ckr, { cause: err })", 'stale handle: not retried'],
  ['failure-model.ts', "return { session: 'replace', dropHandles: false, token: 'probe', error: new HsmUnavailableError('token failure'", "return { session: 'replace', dropHandles: false, token: 'fine', error: new HsmUnavailableError('token failure'", 'device error: no probe (token never marked down)'],
  ['failure-model.ts', "new HsmUnavailableError('token failure', ckr, { cause: err, retryable: true })", "new HsmUnavailableError('token failure', ckr, { cause: err })", 'device error: not retried after a passed probe'],
  ['failure-model.ts', "token: 'down-for-good'", "token: 'probe'", 'PIN error: probed (and re-initialized) instead of down for good'],
  ['failure-model.ts', "if (STALE_HANDLE.has(ckr)) {", "if (false) {", 'stale handle: treated as a plain session error'],
  ['ckr.ts', "'CKR_CRYPTOKI_NOT_INITIALIZED', 'CKR_GENERAL_ERROR', ", "'CKR_CRYPTOKI_NOT_INITIALIZED', ", 'CKR_GENERAL_ERROR not device-class'],
  ['ckr.ts', "const LOGIN = new Set(['CKR_PIN_INCORRECT', 'CKR_PIN_LOCKED', 'CKR_PIN_EXPIRED', 'CKR_PIN_INVALID', 'CKR_PIN_LEN_RANGE']", "const LOGIN = new Set([]", 'no login class'],
  ['token.ts', "if (reaction.session === 'keep') pool.release(session);\n    else pool.discard(session);", 'pool.discard(session);', 'react: every failed session replaced'],
  ['token.ts', "if (reaction.session === 'keep') pool.release(session);\n    else pool.discard(session);", 'pool.release(session);', 'react: every failed session kept'],
  ['token.ts', 'if (reaction.dropHandles) this.handles.clear();', '', 'react: handle cache never dropped'],
  ['token.ts', "if (reaction.token === 'probe' && !(await this.probe()).ok) return new HsmUnavailableError", "if (false) return new HsmUnavailableError", 'react: no probe after a device-class error'],
  ['token.ts', "if (reaction.token === 'down-for-good') this.markDown(ckrName(reaction.error.ckr ?? -1), true);\n    return reaction.error;", 'return reaction.error;', 'react: PIN error does not take the token down'],
  ['token.ts', 'if (!retried && this.down === undefined) return this.withSession(operation, true);', '', 'withSession: no retry on a fresh session'],
  ['token.ts', 'if (!retried && this.down === undefined) return this.withSession(operation, true);', 'if (this.down === undefined) return this.withSession(operation, true);', 'withSession: retried without bound'],
  ['token.ts', 'if (this.down !== undefined || !this.pool) throw new HsmUnavailableError(`token is down: ${this.down}`);\n    return this.pool;', 'if (!this.pool) throw new HsmUnavailableError(`token is down: ${this.down}`);\n    return this.pool;', 'requests served (tried) while the token is down'],
  ['token.ts', 'this.recoveryDelayMs = Math.min(delay * 2, this.options.recoveryMaxDelayMs ?? 5000);', 'this.recoveryDelayMs = Math.min(delay, this.options.recoveryMaxDelayMs ?? 5000);', 'recovery: no backoff'],
  ['token.ts', 'this.recoveryDelayMs = Math.min(delay * 2, this.options.recoveryMaxDelayMs ?? 5000);', 'this.recoveryDelayMs = delay * 2;', 'recovery: backoff without a cap'],
  ['token.ts', "      for (const cls of [pkcs11js.CKO_PRIVATE_KEY, pkcs11js.CKO_PUBLIC_KEY]) {\n        this.findHandles(", "      for (const cls of [] as number[]) {\n        this.findHandles(", 'recovery: keys not found again before serving'],
  ['token.ts', "if (ckr !== undefined && classifyCkr(ckr) === 'login') {\n      this.permanentlyDown = true;", "if (false) {\n      this.permanentlyDown = true;", 'recovery: keeps logging in after a refused PIN'],
  ['token.ts', "if (!isLoggedInState(seen.state)) {\n        this.relogging", "if (false) {\n        this.relogging", 'probe: a lost login goes unnoticed'],
  ['token.ts', "if (reaction.token === 'probe' && !(await this.probe()).ok) throw new HsmUnavailableError", "if (false) throw new HsmUnavailableError", 'admin: no probe after a device-class failure'],
  ['token.ts', "if (reaction.token === 'probe' && !(await this.probe()).ok) throw new HsmUnavailableError(reaction.error.message, reaction.error.ckr, { cause: err });\n    if (reaction.token === 'down-for-good') this.markDown(ckrName(reaction.error.ckr ?? -1), true);\n    throw err;", "this.markDown('admin failure');\n    throw err;", 'admin: any failure takes the token down (the defect of #15)'],
  ['token.ts', 'const outcome = await withDeadline(settled, this.options.operationTimeoutMs ?? 10_000);', 'const outcome = await settled;', 'no operation deadline'],
  ['token.ts', 'if (epoch === this.handleEpoch) this.handles.set(', 'if (false) this.handles.set(', 'stale handles: a found handle is never cached'],
  // A lost login (#16): logged in again once, on a fresh anchor, shared by every caller; never after a refused PIN.
  ['failure-model.ts', 'if (LOGIN_LOST.has(ckr)) {', 'if (false) {', 'lost login: treated as a plain session error (its session replaced)'],
  ['failure-model.ts', "return { session: 'keep', dropHandles: false, token: 'probe', error: new HsmUnavailableError('the login was lost'", "return { session: 'keep', dropHandles: false, token: 'fine', error: new HsmUnavailableError('the login was lost'", 'lost login: no probe (nobody logs in again)'],
  ['failure-model.ts', "return { session: 'keep', dropHandles: false, token: 'probe', error: new HsmUnavailableError('the login was lost'", "return { session: 'replace', dropHandles: false, token: 'probe', error: new HsmUnavailableError('the login was lost'", 'lost login: the session replaced'],
  ['failure-model.ts', "case 'session':\n      return { session: 'replace', dropHandles: false, token: 'probe'", "case 'session':\n      return { session: 'replace', dropHandles: false, token: 'fine'", 'session error: no shared probe (each request replaces its session blindly)'],
  ['token.ts', "this.relogging = this.relogin(ops, slot);\n        await this.relogging.finally(() => (this.relogging = undefined));", "throw new HsmUnavailableError('the login was lost');", 'lost login: token marked down and re-initialized instead of a login (the #16 gap)'],
  ['token.ts', 'this.probing ??= this.operations()', 'this.probing = this.operations()', 'probe: not shared (one probe, and one login, per caller)'],
  ['token.ts', "this.handles.clear();\n    this.handleEpoch++;\n    const { session, state }", 'const { session, state }', 're-login: handle cache kept'],
  ['token.ts', 'this.anchor = session;', '', 're-login: the new session does not become the anchor'],
  ['token.ts', 'this.pool?.renewIdle();', '', 're-login: idle sessions kept (dead ones lent again)'],
  ['token.ts', "if (this.relogging) {\n      // The login is being restored", "if (false) {\n      // The login is being restored", 're-login: requests do not wait for it (they meet public sessions)'],
  ['token.ts', 'await withDeadline(this.relogging.catch(() => undefined), this.options.operationTimeoutMs ?? 10_000);', 'await this.relogging.catch(() => undefined);', 're-login: a request waits for a hung login without a deadline'],
  ['token.ts', 'if (this.lastReloginAt !== undefined && now - this.lastReloginAt < minIntervalMs) {', 'if (false) {', 're-login: no bound (a login lost again at once is logged in again at once)'],
  ['token.ts', "this.markDown(detail, ckr !== undefined && classifyCkr(ckr) === 'login');", 'this.markDown(detail);', 're-login: a refused PIN is retried by recovery'],
  ['token.ts', 'if (found.length === 0 && epoch === this.handleEpoch) await this.probe();', '', 'search: a miss on a session without the login taken as the key gone'],
  ['token.ts', '{ retryable: epoch !== this.handleEpoch }', '{ retryable: false }', 'search: a miss that crossed a new login not retried'],
  ['token.ts', "lookup = this.searchOne(cls, ref, session).finally(() => this.lookups.delete(key));", "lookup = this.searchOne(cls, ref, session);", 'a failed lookup is remembered for ever'],
];

const results = [];
for (const [file, from, to, name] of M) {
  const path = `src/hsm/${file}`;
  const original = readFileSync(path, 'utf8');
  if (!original.includes(from)) {
    results.push({ name, result: 'NOT APPLIED (source changed: update the mutant)' });
    continue;
  }
  writeFileSync(path, original.replace(from, to));
  try {
    const run = spawnSync('npx', ['vitest', 'run', TEST], { encoding: 'utf8' });
    // eslint-disable-next-line no-control-regex
    const out = run.stdout.replace(/\u001b\[[0-9;]*m/g, '');
    const killedBy = [...new Set([...out.matchAll(/FAIL .*? > (.+)$/gm)].map((m) => m[1].trim()))];
    results.push({ name, result: run.status !== 0 ? 'killed' : 'SURVIVED', by: killedBy.slice(0, 2).join(' | ') + (killedBy.length > 2 ? ` (+${killedBy.length - 2})` : '') });
  } finally {
    writeFileSync(path, original);
  }
}
for (const r of results) console.log(`${r.result.startsWith('killed') ? 'killed  ' : r.result.padEnd(8)}  ${r.name}${r.by ? `\n          ↳ ${r.by}` : ''}`);
const survived = results.filter((r) => !r.result.startsWith('killed')).length;
console.log(`\n${results.length - survived} of ${results.length} mutants killed`);
process.exit(survived === 0 ? 0 : 1);
