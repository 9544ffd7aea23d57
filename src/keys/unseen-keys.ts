import type { KeyRef } from '../hsm/objects.js';
import type { ProbeOutcome } from '../hsm/capabilities.js';
import type { Token } from '../hsm/token.js';

/**
 * A registry record names a key object its token does not show. On a module that reads its store once, at
 * C_Initialize (tpm2-pkcs11; nShield under CKNFAST_ASSUME_SINGLE_PROCESS=1), that is a key another process — the
 * admin CLI, another replica — made after this process initialized the module, and re-initializing the module
 * (Token.reinitialize: off the event loop, operations in flight drained, new ones held) shows it. Whether a module is
 * such a one is measured, not assumed: the capability probe's "other processes' objects" ('not seen'), asked once per
 * token and only when a key is missing. A missing key is worth one re-initialization: still missing after it, it is
 * not on the token (its requests are answered as for any key whose object is gone).
 */
interface UnseenKeysToken {
  name: string;
  token: Token;
  /** The capability probe's answer to "does this process see objects other processes write?" */
  otherProcessesObjects(): Promise<ProbeOutcome>;
}

interface UnseenKeysLog {
  info(message: string, meta?: Record<string, unknown>): void;
  warn(message: string, meta?: Record<string, unknown>): void;
}

const refKey = (ref: KeyRef): string => `${ref.label}\u0000${ref.id ?? ''}`;

export class UnseenKeys {
  /** Per token, the missing keys a re-initialization was done for already (or that were missing at start-up). */
  private readonly tried = new Map<string, Set<string>>();

  constructor(
    private readonly tokens: readonly UnseenKeysToken[],
    private readonly log: UnseenKeysLog,
  ) {}

  /** Keys missing right after the module was initialized (start-up) are missing: no re-initialization will show them. */
  missingAtStart(missing: ReadonlyMap<string, readonly KeyRef[]>): void {
    for (const [name, refs] of missing) this.triedFor(name, refs);
  }

  /**
   * Re-initializes every token that misses a key not tried before and does not show other processes' objects.
   * Resolves with the names of the tokens re-initialized (the caller reads the registry's material again then).
   */
  async reveal(missing: ReadonlyMap<string, readonly KeyRef[]>): Promise<string[]> {
    const reopened: string[] = [];
    for (const { name, token, otherProcessesObjects } of this.tokens) {
      const fresh = (missing.get(name) ?? []).filter((ref) => !this.tried.get(name)?.has(refKey(ref)));
      if (fresh.length === 0) continue;
      this.triedFor(name, fresh);
      const shared = await otherProcessesObjects();
      if (!shared.startsWith('not seen')) continue;
      const labels = fresh.map((r) => r.label);
      this.log.info('registry keys the token does not show; the module shows other processes\' objects only after a re-initialization: re-initializing', { token: name, labels });
      try {
        await token.reinitialize(`registry records name keys it did not show: ${labels.join(', ')}`);
        reopened.push(name);
      } catch (err) {
        this.log.warn('re-initializing the module to see keys other processes made failed; the token recovers by itself', { token: name, error: (err as Error).message });
      }
    }
    return reopened;
  }

  private triedFor(name: string, refs: readonly KeyRef[]): void {
    const set = this.tried.get(name) ?? new Set<string>();
    for (const ref of refs) set.add(refKey(ref));
    this.tried.set(name, set);
  }
}
