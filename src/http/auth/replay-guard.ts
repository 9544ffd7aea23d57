import { createHash } from 'node:crypto';
import { ApiError } from '../error-catalog.js';

/** The SDKs send 32 hex digits or a 36-character UUID; anything longer is refused before it is hashed or stored. */
export const MAX_NONCE_LENGTH = 64;

/**
 * 53 bits of SHA-256 over the access key id and the nonce, NUL-separated ("ab"+"c" and "a"+"bc" differ): what every
 * store keeps instead of the nonce (fixed size whatever the client sent; a V8 small number in memory, 14 hex digits in
 * Redis). Two different nonces share an id with a chance of 1 in 2⁵³ per pair: at 8 M live ids, one request in ≈ 10⁹
 * would be refused as a replay.
 */
export function nonceId(accessKeyId: string, nonce: string): number {
  const digest = createHash('sha256').update(accessKeyId).update('\u0000').update(nonce).digest();
  return digest.readUIntBE(0, 6) * 32 + (digest[6]! >> 3);
}

/** One remembered nonce, as the journal and the shared stores exchange it. */
export interface RememberedNonce {
  account: string;
  id: number;
  /** When the request's timestamp leaves the window (ms since 1970): the nonce may be forgotten then. */
  expiresAtMs: number;
}

interface ReplayGuardOptions {
  /** All accounts together (default 8 M, ≈ 360 MB). */
  maxEntries?: number;
  /** One account (default 2 M: 1,000 req/s for 30 min plus a margin), so that no account can fill the guard alone. */
  maxEntriesPerAccount?: number;
  now?: () => number;
}

/**
 * Remembers each nonce id for as long as a request carrying it could still pass the timestamp window, so a captured
 * request cannot be played again: until the request's own timestamp leaves the window (`keepMs` from now), at most
 * `ttlMs` (twice the window: a timestamp may be up to one window ahead). Ids are kept per account; pruning looks at an
 * account's oldest entries only and stops at the first one still live: an entry behind it that expired earlier (its
 * request carried an older timestamp) is dropped a little late, never early.
 *
 * Capacity: a full guard refuses rather than forgets (forgetting would reopen the replay window), and it is full per
 * account first: an account that reaches `maxEntriesPerAccount` is refused while the others go on. Only admitted
 * requests stay remembered (a throttled one is released, see ReplayCheck), so an account's entries are bounded by its
 * limit × the window, not by how fast it can send.
 *
 * Memory: ≈ 45 bytes per nonce (measured: 1 M entries, +45 MB of heap): the id and its expiry in whole seconds since
 * the guard started, both kept unboxed by V8.
 */
export class ReplayGuard {
  /** Account → nonce id → expiry, in seconds since the guard started (small integers, rounded up). */
  private readonly accounts = new Map<string, Map<number, number>>();
  private total = 0;
  private readonly epochMs: number;
  private readonly maxEntries: number;
  private readonly maxEntriesPerAccount: number;
  private readonly now: () => number;
  private sweptAt = 0;

  constructor(
    private readonly ttlMs: number,
    options: ReplayGuardOptions = {},
  ) {
    this.now = options.now ?? Date.now;
    this.maxEntries = options.maxEntries ?? 8_000_000;
    this.maxEntriesPerAccount = Math.min(options.maxEntriesPerAccount ?? 2_000_000, this.maxEntries);
    this.epochMs = this.now();
  }

  /** Remembers the id: `used` when it is already remembered (a replay), `full` when the account (or all) has no room. */
  claim(account: string, id: number, keepMs?: number): 'fresh' | 'used' | 'full' {
    const t = this.now();
    this.sweep(t);
    let seen = this.accounts.get(account);
    if (seen) this.prune(seen, t);
    if (seen?.has(id)) return 'used';
    if (this.total >= this.maxEntries || (seen?.size ?? 0) >= this.maxEntriesPerAccount) return 'full';
    if (!seen) this.accounts.set(account, (seen = new Map()));
    const keep = keepMs === undefined ? this.ttlMs : Math.max(1, Math.min(keepMs, this.ttlMs));
    seen.set(id, Math.ceil((t + keep - this.epochMs) / 1000));
    this.total++;
    return 'fresh';
  }

  /** Forgets an id claimed for a request that was then refused (throttled, or the shared store could not tell). */
  release(account: string, id: number): void {
    const seen = this.accounts.get(account);
    if (seen?.delete(id)) this.total--;
  }

  /** Takes back an id remembered before a restart (the journal), unless it has expired; no capacity check. */
  restore({ account, id, expiresAtMs }: RememberedNonce): void {
    if (expiresAtMs <= this.now()) return;
    let seen = this.accounts.get(account);
    if (!seen) this.accounts.set(account, (seen = new Map()));
    if (!seen.has(id)) this.total++;
    seen.set(id, Math.ceil((expiresAtMs - this.epochMs) / 1000));
  }

  /** Every live id (to re-publish them to a shared store that lost its data). */
  *entries(): Generator<RememberedNonce> {
    const nowSeconds = (this.now() - this.epochMs) / 1000;
    for (const [account, seen] of this.accounts) {
      for (const [id, expiry] of seen) if (expiry > nowSeconds) yield { account, id, expiresAtMs: this.epochMs + expiry * 1000 };
    }
  }

  get size(): number {
    return this.total;
  }

  private prune(seen: Map<number, number>, t: number): void {
    const nowSeconds = (t - this.epochMs) / 1000;
    for (const [id, expiry] of seen) {
      if (expiry > nowSeconds) break;
      seen.delete(id);
      this.total--;
    }
  }

  /** Once a second, the accounts that were not asked about lately: their expired ids go too. */
  private sweep(t: number): void {
    if (t - this.sweptAt < 1000) return;
    this.sweptAt = t;
    for (const [account, seen] of this.accounts) {
      this.prune(seen, t);
      if (seen.size === 0) this.accounts.delete(account);
    }
  }
}

/** What a shared store (Redis, or the cluster primary) says of a nonce id it was asked to remember. */
export type SharedVerdict =
  /** Remembered now; nobody had it. */
  | 'fresh'
  /** Another replica (or worker) has it: a replay. */
  | 'used'
  /** Remembered now, but the store lost its data lately and the replicas are still re-publishing theirs. */
  | 'unsure'
  /** The account has no room left in the store. */
  | 'full';

/** A nonce store the replicas or cluster workers share. `claim` rejects when the store does not answer in time. */
export interface SharedNonces {
  claim(nonce: RememberedNonce): Promise<SharedVerdict>;
  release(account: string, id: number): void;
}

/** A write-ahead journal of accepted ids: resolved once the id is handed to the OS (src/http/auth/nonce-journal.ts). */
interface Journal {
  append(nonce: RememberedNonce): Promise<void>;
}

/** What the gateway does with a request whose nonce the shared store cannot check: `replay.whenSharedStoreDown`. */
type WhenSharedStoreDown = 'refuse' | 'local';

/** A nonce claimed for one request: settled when it may go on; released when the request is refused after all. */
interface NonceClaim {
  settled: Promise<void>;
  release(): void;
}

const storeDown = (): ApiError =>
  new ApiError('ServiceUnavailableTemporary', 'The shared nonce store does not answer, so the request cannot be checked for replay. Try again later.');

/**
 * The replay check, in one place: this replica's guard (synchronous, refuses a replay it saw at once), the journal
 * that keeps its ids across a restart, and the guard the replicas or cluster workers share (Redis, or the cluster
 * primary), when there is one. It runs after authentication, so nothing is remembered for a request whose signature
 * and timestamp are not valid (nobody can burn another caller's nonces).
 *
 * Replay protection does not degrade silently: a request whose nonce the shared store cannot check (it does not
 * answer within its deadline, or it lost its data and the replicas are re-publishing) is refused with 503 — always for
 * state-changing actions, and for the others too unless the operator chose `whenSharedStoreDown: local`, which accepts
 * replays across replicas for as long as the store is away (this replica still refuses those it saw).
 */
export class ReplayCheck {
  constructor(
    private readonly local: ReplayGuard,
    private readonly options: { shared?: SharedNonces; journal?: Journal; whenSharedStoreDown?: WhenSharedStoreDown } = {},
  ) {}

  /** Throws SignatureNonceUsed at once when this replica has seen the nonce; otherwise the claim settles (or rejects). */
  check(caller: { accessKeyId: string; account: string; nonce: string; nonceKeepMs: number }, changesState: boolean): NonceClaim {
    const { account } = caller;
    const id = nonceId(caller.accessKeyId, caller.nonce);
    const local = this.local.claim(account, id, caller.nonceKeepMs);
    if (local === 'used') throw new ApiError('SignatureNonceUsed');
    if (local === 'full') throw full();
    const remembered: RememberedNonce = { account, id, expiresAtMs: Date.now() + caller.nonceKeepMs };
    const { shared, journal } = this.options;
    let claimedShared = false;
    const verdict = shared?.claim(remembered).then(
      (answer) => {
        claimedShared = answer === 'fresh' || answer === 'unsure';
        return answer;
      },
      () => 'down' as const,
    );
    const tolerant = !changesState && this.options.whenSharedStoreDown === 'local';
    const sharedOk = verdict?.then((answer) => {
      // The cloud's message verbatim (the catalog keeps it): which replica saw the nonce first is not the client's concern.
      if (answer === 'used') throw new ApiError('SignatureNonceUsed');
      if (answer === 'full') throw full();
      if ((answer === 'down' || answer === 'unsure') && !tolerant) throw storeDown();
    });
    const written = journal?.append(remembered).catch((err: unknown) => {
      throw new ApiError('ServiceUnavailableTemporary', 'The nonce journal cannot be written. Try again later.', { cause: err });
    });
    const settled = Promise.all([written, sharedOk]).then(() => undefined);
    return {
      settled,
      release: () => {
        this.local.release(account, id);
        // The shared claim may still be on its way: release it once it has answered.
        void verdict?.then(() => claimedShared && shared!.release(account, id));
      },
    };
  }
}

const full = (): ApiError =>
  new ApiError('ServiceUnavailableTemporary', 'This account has sent more requests within the timestamp window than the replay guard can remember. Try again later.');
