import { LifecycleError } from './errors.js';

/**
 * A compare-and-swap of registry records on the token, built from "write, then look": PKCS#11 has no atomic
 * primitive, but the token store is only allowed on modules that show other processes' objects live (start-up
 * check, registry-source.ts), and that is enough.
 *
 * (a) A change creates the next revision (the revision it read + 1) of every record it writes as a *pending* object
 *     (CKA_LABEL `pending:<kind>:<id>`; a removal writes a pending tombstone), destroying nothing. Readers ignore
 *     pending objects, so nobody builds on a change that may yet lose.
 * (b) It searches the records again and loses if another object of a record it wrote (pending or not) has a revision
 *     >= its own (a rival writer of the same record), if the object it read is gone (a rival's change was made in
 *     between), or if the registry with every object now on the token, pending ones included, is invalid because of
 *     its writes (one alias bound to two keys: two writers of different records).
 * (c) Having lost, it destroys what it wrote and answers `conflict` (409): nothing of it stays, nobody saw it. Having
 *     won, it relabels its objects to `<kind>:<id>` (the commit point), destroys the older revisions it saw, bumps the
 *     marker, and only then acknowledges.
 *
 * Why at most one of two racing writers of a record wins: both read revision n (a writer that read n + 1 comes after a
 * commit, and its rival's object of n is gone), so both write n + 1; each writes before it looks and objects are
 * visible across processes at once, so the one that looks second sees the first's object at n + 1 — pending, or
 * committed — and loses, unless the first had lost and destroyed it already, in which case only one is acknowledged.
 * Both may lose (both 409): safe, nothing acknowledged is lost, and the client retries from fresh state.
 *
 * A writer that dies between (a) and (c) leaves a pending object that would make every later writer of that record
 * lose: past ABANDONED_MS after it was written (its own clock, stored in the object) it counts as abandoned, and the
 * next winner destroys it. So that a slow writer is never taken for a dead one, a writer whose commit point comes
 * later than SELF_LIMIT_MS after its write gives up by itself (409); this assumes hosts' clocks agree to within
 * ABANDONED_MS - SELF_LIMIT_MS (NTP does far better).
 *
 * Measured limit (SoftHSMv2 2.6.1, file store): when two processes create token objects at nearly the same moment, the
 * later creator may not see the earlier's object until some other write happens (bench/experiments/
 * softhsm-concurrent-create.mjs). In no measured round did both miss, so of two writers that both write before either
 * looks one still loses; the window left is a writer whose write lands between a rival's look
 * and that rival's destruction of the older revision (a millisecond or so): both can then win. On SoftHSMv2 the
 * processes sharing the token therefore take turns under a lock file in its token directory (host-lock.ts).
 *
 * The locks (that file, Redis, the cluster primary's) stay where configured: with them no rival is ever seen, and the
 * look costs one search of the records (plus the re-read after the commit, registry-source.ts).
 */
export interface WriteThenLook<W> {
  /** (a) Creates the pending objects; a failure part-way destroys the ones already made. */
  write(): W | Promise<W>;
  /** (b) Why this change lost (given to the caller in the 409), or undefined when it won. */
  look(written: W): string | undefined | Promise<string | undefined>;
  /** Lost: destroys everything write() made. */
  discard(written: W): void | Promise<void>;
  /** (c) Won: commits the objects, destroys the older revisions the look saw, bumps the marker. */
  commit(written: W): void | Promise<void>;
}

/** A pending object older than this was left by a writer that died; later writers remove it. */
export const ABANDONED_MS = 60_000;
/** A writer whose commit would come later than this after its write gives up (409), so it is never taken for dead. */
export const SELF_LIMIT_MS = 10_000;

/** Runs the three phases; a lost race (or a failed look) leaves nothing of this change on the token. */
export async function compareAndSwap<W>(steps: WriteThenLook<W>, now: () => number = Date.now): Promise<void> {
  const written = await steps.write();
  const wroteAt = now();
  let lost: string | undefined;
  try {
    lost = await steps.look(written);
  } catch (err) {
    await steps.discard(written);
    throw err;
  }
  if (lost === undefined && now() - wroteAt > SELF_LIMIT_MS) lost = 'the token was too slow to make it safely';
  if (lost !== undefined) {
    await steps.discard(written);
    throw new LifecycleError('conflict', `the change was not made: ${lost}; try again`);
  }
  await steps.commit(written);
}

/** One object of a record, as the look sees it. `value`: the record's canonical text (a tombstone: ''). */
export interface SeenRevision {
  revision: number;
  value: string;
  mine: boolean;
  pending: boolean;
  /** When a pending object was written (its writer's clock, ms). */
  writtenAt?: number;
}

/** A pending object whose writer died (or never cleans up): not a rival, and removed by the next winner. */
export const abandoned = (seen: { pending?: boolean; mine?: boolean; writtenAt?: number }, now: number): boolean =>
  seen.pending === true && seen.mine !== true && now - (seen.writtenAt ?? 0) > ABANDONED_MS;

/**
 * The look's rule for one record written: `revision` is this change's, `basis` the committed object the change read
 * (none for a new record). A rival's object at the same or a later revision, or the basis gone, means another writer
 * got there.
 */
export function rivalOf(seen: readonly SeenRevision[], revision: number, basis: { revision: number; value: string } | undefined, now: number): string | undefined {
  const live = seen.filter((s) => !s.mine && !abandoned(s, now));
  if (live.some((s) => s.revision >= revision)) return 'another writer changed the same record at the same time';
  if (basis && !live.some((s) => !s.pending && s.revision === basis.revision && s.value === basis.value)) {
    return 'another writer changed the record since this change read it';
  }
  return undefined;
}
