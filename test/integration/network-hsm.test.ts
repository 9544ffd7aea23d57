import { createHash, verify } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Worker } from 'node:worker_threads';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Config } from '../../src/config/schema.js';
import { buildNetsim, NETSIM_MODULE, NetsimControl, netsimEnv } from '../helpers/netsim.js';
import { send, signV1, toQuery, v1Params, type RawResponse } from '../helpers/raw-client.js';
import { SOFTHSM_MODULE, startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

// Issue #16: the gateway in front of a network HSM. The gateway runs in this process (its event loop is this test's
// loop: a timer here measures what every request would wait), its default token behind the emulated network HSM
// (softhsm/netsim, a test tool) which forwards to the demo's SoftHSMv2 token after a delay per call and injects
// faults on command. Assertions are on answers, signatures, counters and one-sided time bounds, never on rates.
//
// The emulator reads its environment once per process (the first C_Initialize): every gateway of this file shares
// the control directory and the configured delay (1 ms per call); a test that wants another delay sets it through
// the control channel, and `reset` after each test puts the configured one back.

const CONFIGURED_DELAY_US = 1000;
const ALIAS = 'alias/demo-ec-p256';

let controlDir: string;
let netsim: NetsimControl;
const logs = process.env.HSM_GATEWAY_TEST_LOGS === '1';

beforeAll(() => {
  buildNetsim();
  // A short path: the control socket (<dir>/netsim-<pid>.sock) must fit in 107 bytes.
  controlDir = mkdtempSync(join(tmpdir(), 'nhsm-'));
  netsim = new NetsimControl(controlDir);
});

afterEach(async () => {
  // No fault outlives its test (a hang would block the next gateway's start).
  if (hasListener()) await netsim.reset();
});

afterAll(() => {
  if (controlDir) rmSync(controlDir, { recursive: true, force: true });
});

function hasListener(): boolean {
  try {
    netsim.sendSync('ping');
    return true;
  } catch {
    return false;
  }
}

/** A gateway whose default token is the demo's SoftHSMv2 token behind the emulator. */
async function startNetsimGateway(edit?: (c: Config) => void): Promise<TestGateway> {
  return startTestGateway({
    editConfig: (c) => {
      c.hsm.module = NETSIM_MODULE;
      // SOFTHSM2_CONF stays (the real module reads it); NETSIM_MODULE is the real module.
      c.hsm.environment = { ...c.hsm.environment, ...netsimEnv({ module: SOFTHSM_MODULE, controlDir, delayUs: CONFIGURED_DELAY_US, verbose: logs }) };
      c.throttle.defaultLimit = 1_000_000;
      // The registry poll's calls (C_OpenSession, 2 × C_GetAttributeValue, C_CloseSession) run off the event loop
      // now, but they still count in the emulator's call statistics and hold a libuv thread for their round trips.
      // Kept out of the way: these tests are about the request path.
      c.registry.refreshIntervalMs = 60_000;
      edit?.(c);
    },
  });
}

interface Signed {
  message: Buffer;
  answer: RawResponse;
  /** When the answer arrived, performance.now(). */
  at: number;
}

let counter = 0;

/** A signed AsymmetricSign URL (ECDSA_SHA_256 over the SHA-256 digest of a fresh message), and that message. */
function signUrl(gw: TestGateway): { url: string; message: Buffer } {
  const key = gw.demo.keys.find((k) => k.alias === ALIAS)!;
  const message = Buffer.from(`hsm-gateway network HSM test ${process.pid} ${++counter}`);
  const digest = createHash('sha256').update(message).digest('base64');
  const params = v1Params(gw.demo.accessKeyId, { KeyId: key.keyId, KeyVersionId: key.keyVersionId, Algorithm: 'ECDSA_SHA_256', Digest: digest });
  return { url: `${gw.url}/?${toQuery(signV1(params, gw.secret))}`, message };
}

/** One AsymmetricSign through the raw V1 client (on this thread). */
async function sign(gw: TestGateway): Promise<Signed> {
  const { url, message } = signUrl(gw);
  const answer = await send(url);
  return { message, answer, at: performance.now() };
}

/** The answer is a 200 whose Value is a DER ECDSA signature of the message by the demo key's public key. */
function expectVerified(gw: TestGateway, s: Signed): void {
  expect(s.answer.status, s.answer.text).toBe(200);
  const key = gw.demo.keys.find((k) => k.alias === ALIAS)!;
  const signature = Buffer.from(String(s.answer.json!.Value), 'base64');
  expect(verify('sha256', s.message, { key: key.publicKeyPem, dsaEncoding: 'der' }, signature)).toBe(true);
}

/** A 503 as the catalog says it, with nothing of PKCS#11 or a stack in it. */
function expectClean503(s: Signed): void {
  expect(s.answer.status, s.answer.text).toBe(503);
  expect(s.answer.json).toMatchObject({ Code: 'ServiceUnavailableTemporary' });
  expect(s.answer.text).not.toMatch(/CKR_|pkcs11|\n\s+at\s/i);
}

async function readyz(gw: TestGateway): Promise<number> {
  return (await send(`${gw.url}/readyz`)).status;
}

/** A sample of the gateway's /metrics, e.g. metric(gw, 'hsm_gateway_token_up', 'token="default"'). */
async function metric(gw: TestGateway, name: string, labels: string): Promise<number | undefined> {
  const text = (await send(`${gw.url}/metrics`)).text;
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 20_000): Promise<number> {
  const started = Date.now();
  while (!(await check())) {
    if (Date.now() - started > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return Date.now() - started;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Runs `work` while a 1 ms interval timer ticks in this process, which is the gateway's: returns how long the work
 * took, the timer's worst lateness (a gap between ticks beyond its 1 ms) and the sum of all lateness (how long in
 * all the loop could not run a timer).
 */
async function withTimer<T>(work: () => Promise<T>): Promise<{ ms: number; lagMs: number; stalledMs: number; result: T }> {
  let lagMs = 0;
  let stalledMs = 0;
  const started = performance.now();
  let last = started;
  const timer = setInterval(() => {
    const now = performance.now();
    const late = Math.max(0, now - last - 1);
    lagMs = Math.max(lagMs, late);
    stalledMs += late;
    last = now;
  }, 1);
  const result = await work();
  const ms = performance.now() - started;
  // One more tick after the last answer: a loop blocked at the end shows too.
  await sleep(3);
  clearInterval(timer);
  return { ms, lagMs, stalledMs, result };
}

/**
 * An HTTP client on a worker thread: its requests, responses and parsing run on the worker's event loop, so the
 * timer on this thread measures the gateway's work alone (a client on the same loop adds milliseconds of its own
 * per burst on a loaded machine). `send(urls)` fetches them all at once and resolves to the answers in order.
 */
function workerClient(): { send(urls: string[]): Promise<Array<{ status: number; text: string }>>; close(): Promise<number> } {
  const worker = new Worker(
    `const { parentPort } = require('node:worker_threads');
     parentPort.on('message', async (urls) => {
       try {
         parentPort.postMessage(await Promise.all(urls.map(async (u) => { const r = await fetch(u); return { status: r.status, text: await r.text() }; })));
       } catch (err) {
         parentPort.postMessage({ error: String(err) });
       }
     });`,
    { eval: true },
  );
  return {
    send: (urls) =>
      new Promise((resolvePromise, reject) => {
        worker.once('message', (m: Array<{ status: number; text: string }> | { error: string }) => ('error' in m ? reject(new Error(m.error)) : resolvePromise(m)));
        worker.postMessage(urls);
      }),
    close: () => worker.terminate(),
  };
}

describe('a network HSM at 5 ms per call', () => {
  it('when 8 AsymmetricSign requests arrive at once, then all answer 200 with valid signatures, their round trips overlap (well under 8 × 10 ms), and the delay adds less than 5 ms to a 1 ms timer\'s lag', async () => {
    const DELAY_MS = 5;
    const REQUESTS = 8;
    const gw = await startNetsimGateway();
    const client = workerClient();
    try {
      /** 8 requests at once from the worker; every answer a verified signature. */
      const burst = async (): Promise<void> => {
        const requests = Array.from({ length: REQUESTS }, () => signUrl(gw));
        const answers = await client.send(requests.map((r) => r.url));
        answers.forEach((a, i) => {
          const json = JSON.parse(a.text) as Record<string, unknown>;
          expectVerified(gw, { message: requests[i]!.message, at: 0, answer: { status: a.status, text: a.text, json, headers: new Headers() } });
        });
      };
      // Warm-up at the configured delay: JIT, and the worker's keep-alive connections opened.
      for (let i = 0; i < 3; i++) await burst();

      type Trial = { ms: number; lagMs: number; stalledMs: number };
      /** Up to `tries` bursts; the best one (the least timer lag) stands for this delay. */
      const measure = async (tries: number, good: (t: Trial) => boolean): Promise<Trial[]> => {
        const trials: Trial[] = [];
        for (let i = 0; i < tries; i++) {
          const { ms, lagMs, stalledMs } = await withTimer(burst);
          trials.push({ ms, lagMs, stalledMs });
          if (good(trials[i]!)) break;
        }
        return trials;
      };
      const best = (trials: Trial[]): Trial => trials.reduce((a, b) => (b.lagMs < a.lagMs ? b : a));
      // The gateway's own HTTP work for 8 requests arriving together holds its loop for a few ms whatever the HSM
      // does (measured: 4–7 ms here), so the HSM's share is what the delay ADDS: the same bursts with no delay are the
      // baseline. A PKCS#11 call on the main thread would add its 5 ms to the lag and 8 × ≥ 4 ms to the stalls.
      const baseline = best(await measure(5, (t) => t.lagMs < 2));
      await netsim.setDelay('default', DELAY_MS * 1000);
      await netsim.clearStats();
      // In sequence, 8 × (C_SignInit + C_Sign) is 8 × 10 ms = 80 ms: no trial could take under 60 ms. The vitest
      // worker's libuv pool has 4 threads (Node's default): 2 waves of 10 ms ≈ 20 ms plus HTTP. Best of ten: the
      // 2-core machine is shared, and a trial may be descheduled by someone else's work.
      const pass = (t: Trial): boolean => t.ms < 60 && t.lagMs - baseline.lagMs < DELAY_MS && t.stalledMs - baseline.stalledMs < REQUESTS * (DELAY_MS - 1);
      const trials = await measure(10, pass);
      const [status] = await netsim.status();
      const show = (t: Trial): string => `${t.ms.toFixed(1)} ms (timer late ≤ ${t.lagMs.toFixed(1)} ms, ${t.stalledMs.toFixed(1)} ms in all)`;
      console.info(
        `${REQUESTS} concurrent signs, no delay (baseline): ${show(baseline)}; at ${DELAY_MS} ms per call: ${trials.map(show).join('; ')}; most calls in the HSM at once: ${status!.maxInflight}`,
      );
      const chosen = trials.find(pass) ?? best(trials);
      expect(chosen.ms).toBeLessThan(60);
      expect(chosen.lagMs - baseline.lagMs).toBeLessThan(DELAY_MS);
      expect(chosen.stalledMs - baseline.stalledMs).toBeLessThan(REQUESTS * (DELAY_MS - 1));
      // Each request was one C_SignInit + one C_Sign on the token, and calls were inside it together.
      expect(status!.calls.C_SignInit).toBe(REQUESTS * trials.length);
      expect(status!.calls.C_Sign).toBe(REQUESTS * trials.length);
      expect(status!.maxInflight).toBeGreaterThanOrEqual(2);
    } finally {
      await client.close();
      await gw.close();
    }
  });
});

describe('the HSM invalidates its sessions', () => {
  for (const keepLogin of [true, false]) {
    // The requests that meet a dropped session wait for one shared probe; when the login went with the sessions, the
    // probe logs in again once on a fresh session, the handles are found again and the idle sessions renewed: no
    // request needs a second retry, so none answers 503.
    it(`when every session is invalidated (${keepLogin ? 'the login kept' : 'the login lost with them'}), then the next 20 requests all answer 200`, async () => {
      const gw = await startNetsimGateway();
      try {
        for (const s of await Promise.all(Array.from({ length: 8 }, () => sign(gw)))) expectVerified(gw, s);
        await netsim.clearStats();
        // The 8 signing sessions, the anchor that holds the login, and no others.
        expect(await netsim.invalidateSessions({ keepLogin })).toBeGreaterThanOrEqual(9);
        // At once: more requests than sessions, so every invalidated session is met by one.
        const answers = await Promise.all(Array.from({ length: 20 }, () => sign(gw)));
        const statuses = answers.map((a) => a.answer.status);
        if (!statuses.every((s) => s === 200)) {
          // For the report: how long the gateway took to serve again on its own.
          const readyAgainMs = await until('/readyz to pass again', async () => (await readyz(gw)) === 200).catch(() => -1);
          const refused = answers.filter((a) => a.answer.status !== 200).map((a) => a.answer.text);
          console.info(`after invalidate-sessions${keepLogin ? ' keep-login' : ''}: statuses ${JSON.stringify(statuses)}; /readyz 200 again after ${readyAgainMs} ms; refused: ${refused.join(' | ')}`);
        }
        expect(statuses).toEqual(Array.from({ length: 20 }, () => 200));
        for (const s of answers) expectVerified(gw, s);
        // One login when it was lost (none when it was kept), and no re-initialization of the module.
        const [status] = await netsim.status();
        expect(status!.calls.C_Login ?? 0).toBe(keepLogin ? 0 : 1);
        expect(status!.calls.C_Initialize ?? 0).toBe(0);
        expect(await readyz(gw)).toBe(200);
        expect(await metric(gw, 'hsm_gateway_token_up', 'token="default"')).toBe(1);
      } finally {
        await gw.close();
      }
    });
  }
});

describe('the HSM drops the login while no request comes (a YubiHSM after 30 s idle)', () => {
  it('when every session and the login are dropped between requests, then the health probe logs in again by itself: /readyz answers 200 and the next requests all answer 200', async () => {
    const gw = await startNetsimGateway((c) => (c.hsm.healthIntervalMs = 200));
    try {
      expectVerified(gw, await sign(gw));
      await netsim.clearStats();
      await netsim.invalidateSessions();
      const loggedInMs = await until('the health probe to log in again', async () => ((await netsim.status())[0]!.calls.C_Login ?? 0) >= 1);
      console.info(`login dropped while idle: logged in again by the health probe after ${loggedInMs} ms`);
      expect(await readyz(gw)).toBe(200);
      for (const s of await Promise.all(Array.from({ length: 8 }, () => sign(gw)))) expectVerified(gw, s);
      const [status] = await netsim.status();
      expect(status!.calls.C_Login).toBe(1);
      expect(status!.calls.C_Initialize ?? 0).toBe(0);
      expect(await metric(gw, 'hsm_gateway_token_up', 'token="default"')).toBe(1);
    } finally {
      await gw.close();
    }
  });
});

describe('the HSM hangs', () => {
  it('when a sign hangs for 2 × operationTimeoutMs, then it is answered 503 at the deadline, its session is not lent again while the call hangs, and signing works once the hang ends', async () => {
    const TIMEOUT_MS = 300;
    const HANG_MS = 2 * TIMEOUT_MS;
    // One session: a second request can only sign on the one the hung call holds. No health timer: nothing else
    // enters the token during the hang.
    const gw = await startNetsimGateway((c) => ((c.hsm.sessions = 1), (c.hsm.operationTimeoutMs = TIMEOUT_MS), (c.hsm.healthIntervalMs = 0)));
    try {
      expectVerified(gw, await sign(gw));
      // The start-up's background work (the CKA_SIGN reconciliation: a search and reads per key) must be over, or
      // its calls hang too: wait until the token has seen no call for 300 ms.
      const total = (st: { calls: Record<string, number> }): number => Object.values(st.calls).reduce((x, y) => x + y, 0);
      for (let last = -1, now = total((await netsim.status())[0]!); now !== last; ) {
        await sleep(300);
        [last, now] = [now, total((await netsim.status())[0]!)];
      }

      const hangFrom = performance.now();
      await netsim.hang(HANG_MS);
      const sent = performance.now();
      const first = sign(gw);
      // The second request while the first is still hung (before its deadline).
      await sleep(TIMEOUT_MS / 3);
      const second = sign(gw);

      const a = await first;
      const answeredMs = a.at - sent;
      console.info(`hang ${HANG_MS} ms, deadline ${TIMEOUT_MS} ms: first answered ${a.answer.status} after ${answeredMs.toFixed(0)} ms`);
      expectClean503(a);
      expect(answeredMs).toBeGreaterThanOrEqual(TIMEOUT_MS - 1); // timers may fire up to 1 ms early by this clock
      expect(answeredMs).toBeLessThan(HANG_MS);

      // Past the deadline, the hung call still holds the session: the second request waits for it, and the token
      // sees one call, not a second one on the same session.
      expect(await metric(gw, 'hsm_gateway_hsm_sessions', 'token="default",state="in_use"')).toBe(1);
      expect(await metric(gw, 'hsm_gateway_hsm_sessions', 'token="default",state="waiting"')).toBe(1);
      const [during] = await netsim.status();
      expect(during!.hangMsLeft).toBeGreaterThan(0);
      expect(during!.inflight).toBe(1);

      const b = await second;
      console.info(`second answered ${b.answer.status} ${(b.at - hangFrom).toFixed(0)} ms after the hang began`);
      expectVerified(gw, b);
      expect(b.at - hangFrom).toBeGreaterThanOrEqual(HANG_MS - 1);
      // And the session serves on.
      for (let i = 0; i < 3; i++) expectVerified(gw, await sign(gw));
      expect(await readyz(gw)).toBe(200);
    } finally {
      await gw.close();
    }
  });
});

describe('a client hangs up while its sign waits on the HSM', () => {
  it('when the client closes its connection during the sign, then the sign completes and its audit record says clientGone; an answered request has no clientGone', async () => {
    const gw = await startNetsimGateway((c) => (c.hsm.healthIntervalMs = 0));
    try {
      expectVerified(gw, await sign(gw));
      // The hang is long against the hang-up (300 ms in): the request reaches the token well within it on a loaded machine.
      const HANG_MS = 1000;
      await netsim.hang(HANG_MS);
      const { url } = signUrl(gw);
      const hungUp = new Promise<void>((resolve) => {
        const req = request(url);
        req.on('error', () => resolve());
        req.on('close', () => resolve());
        req.end();
        setTimeout(() => req.destroy(), 300);
      });
      await hungUp;
      await sleep(HANG_MS);
      expectVerified(gw, await sign(gw));
      const signs = (): Array<Record<string, unknown>> =>
        readFileSync(join(gw.home, 'audit', 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>).filter((r) => r.action === 'AsymmetricSign');
      await until('the hung sign\'s record', async () => signs().length === 3, 10_000);
      // One record, whichever order the hung sign and the last one were written in, says the client was gone.
      expect(signs().filter((r) => r.clientGone === true)).toEqual([expect.objectContaining({ status: 200, code: 'OK' })]);
      expect(signs().filter((r) => r.clientGone === undefined)).toHaveLength(2);
    } finally {
      await gw.close();
    }
  });
});

describe('the HSM answers CKR_DEVICE_ERROR for a while', () => {
  it('when every call fails with a device error for 500 ms under load, then every answer is 200 or 503 (never 500), and signing resumes without a restart', async () => {
    const gw = await startNetsimGateway((c) => (c.hsm.healthIntervalMs = 200));
    try {
      const answers: Signed[] = [];
      let running = true;
      const workers = Array.from({ length: 4 }, async () => {
        while (running) answers.push(await sign(gw));
      });
      await sleep(300);
      const before = answers.length;
      await netsim.deviceError(500);
      await sleep(500);
      const recoveredMs = await until('/readyz to pass again', async () => (await readyz(gw)) === 200);
      await sleep(300);
      running = false;
      await Promise.all(workers);

      const byStatus = new Map<number, number>();
      for (const a of answers) byStatus.set(a.answer.status, (byStatus.get(a.answer.status) ?? 0) + 1);
      console.info(`device error 500 ms: ${answers.length} answers (${before} before it), by status ${JSON.stringify([...byStatus])}; /readyz 200 again ${recoveredMs} ms after the window`);
      for (const a of answers.filter((x) => x.answer.status !== 200 && x.answer.status !== 503)) console.info('unexpected answer', a.answer.status, a.answer.text);
      expect([...byStatus.keys()].every((s) => s === 200 || s === 503)).toBe(true);
      expect(byStatus.get(503) ?? 0).toBeGreaterThan(0); // the fault was seen
      for (const a of answers) {
        if (a.answer.status === 200) expectVerified(gw, a);
        else expectClean503(a);
      }
      // The last answers were signatures again, and a new request signs.
      expect(answers[answers.length - 1]!.answer.status).toBe(200);
      expectVerified(gw, await sign(gw));
      expect(await metric(gw, 'hsm_gateway_token_up', 'token="default"')).toBe(1);
    } finally {
      await gw.close();
    }
  });
});

describe('one C_Sign fails with CKR_GENERAL_ERROR', () => {
  it('when the next C_Sign answers CKR_GENERAL_ERROR, then the request still answers 200 (retried on a fresh session after the probe passes) and the token stays up', async () => {
    const gw = await startNetsimGateway();
    try {
      expectVerified(gw, await sign(gw));
      await netsim.clearStats();
      await netsim.generalErrorNext('C_Sign');
      const s = await sign(gw);
      expectVerified(gw, s);
      const [status] = await netsim.status();
      expect(status!.injected).toBe(1);
      expect(status!.pending).toEqual([]);
      // The failed C_Sign and the retry's; no re-initialization (the probe passed, the token was never down).
      expect(status!.calls.C_Sign).toBe(2);
      expect(status!.calls.C_Initialize ?? 0).toBe(0);
      expect(await readyz(gw)).toBe(200);
      expect(await metric(gw, 'hsm_gateway_token_up', 'token="default"')).toBe(1);
      expectVerified(gw, await sign(gw));
    } finally {
      await gw.close();
    }
  });
});

describe('the HSM behind the library is lost, then back (tpm2-pkcs11 when tpm2-abrmd restarts)', () => {
  it('when the calls that need the backend fail while sessions and the login still work, then requests answer 503 while it is away, and once it is back (only a re-initialization cures the module) the gateway signs again by itself', async () => {
    const gw = await startNetsimGateway((c) => (c.hsm.healthIntervalMs = 200));
    try {
      expectVerified(gw, await sign(gw));
      await netsim.loseBackend();
      // What every request meets while the backend is away: a clean 503, whether or not the token is down yet.
      for (let i = 0; i < 3; i++) expectClean503(await sign(gw));
      // The health check sees it too (it asks the token to compute, not only to open a session): not ready.
      await until('/readyz to fail', async () => (await readyz(gw)) === 503);
      expect(await metric(gw, 'hsm_gateway_token_up', 'token="default"')).toBe(0);
      expectClean503(await sign(gw));

      await netsim.clearStats();
      await netsim.restoreBackend();
      const backMs = await until('a request to sign again', async () => (await sign(gw)).answer.status === 200);
      console.info(`backend lost, then back: signing again ${backMs} ms after it returned`);
      for (const s of await Promise.all(Array.from({ length: 4 }, () => sign(gw)))) expectVerified(gw, s);
      const [status] = await netsim.status();
      // Cured by the gateway's re-initialization of the module, not by the backend's return alone.
      expect(status!.backend).toBe('ok');
      expect(status!.calls.C_Initialize ?? 0).toBeGreaterThanOrEqual(1);
      expect(await readyz(gw)).toBe(200);
      expect(await metric(gw, 'hsm_gateway_token_up', 'token="default"')).toBe(1);
    } finally {
      await gw.close();
    }
  });
});
