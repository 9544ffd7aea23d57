import pkcs11js from 'pkcs11js';
import type { DeepCapabilities } from '../hsm/capabilities.js';
import { ckrName, ckrOf } from '../hsm/ckr.js';
import type { KeyRef } from '../hsm/objects.js';
import type { Token } from '../hsm/token.js';
import { LifecycleError } from './errors.js';
import type { RegistrySnapshot, RegistrySource } from './registry-source.js';
import type { KeyRecord } from './registry.js';

/**
 * The HSM's own refusal of a key that may not sign: CKA_SIGN of its private key objects follows the key's state
 * (Enabled: true; Disabled, PendingDeletion: false), so a replica whose copy of the registry is not yet up to date is
 * refused by the token itself (CKR_KEY_FUNCTION_NOT_PERMITTED, answered Rejected.Disabled), and a change that stops a
 * key signing is acknowledged only once no replica can sign with it any more.
 *
 * Order (the registry record is the truth; CKA_SIGN is brought in line with it):
 *   stop signing (DisableKey, ScheduleKeyDeletion):  write the record, then CKA_SIGN = false, then acknowledge.
 *   sign again (EnableKey, CancelKeyDeletion):       write the record, then CKA_SIGN = true (`allow`), then acknowledge.
 * The record goes first in both directions, so a change cut off half-way never leaves a record that says Enabled over
 * an object that refuses because of a stop that was never recorded; and a refusal seen while a stop is under way is
 * always explained by the record (it says Disabled before any object refuses). The one half-done state that makes a
 * key refuse although its record says Enabled is an EnableKey cut off between its two steps (or an operator's own
 * change of CKA_SIGN): the gateway's start-up reconciliation (`reconcile`) and the next EnableKey repair it. A stop
 * cut off half-way leaves the record Disabled over an object that still permits: every replica refuses within the
 * registry's propagation bound, as before, and reconciliation sets CKA_SIGN false; the stop was never acknowledged.
 *
 * `allow` never sets CKA_SIGN true on a stale view: it reads the record fresh first (under the registry's change lock
 * when Redis is configured, so no stop can interleave), and reads it again afterwards, setting CKA_SIGN false again if
 * a stop was recorded meanwhile (without a lock: a stop recorded between the fresh read and the write).
 *
 * Where the module refuses the change (CKA_SIGN not modifiable: CKR_ATTRIBUTE_READ_ONLY, CKR_ACTION_PROHIBITED, …;
 * AWS CloudHSM documents no C_SetAttributeValue on keys), the token cannot be reached, the module was measured not to
 * show other processes what this one changes (registry.store: postgres on tpm2-pkcs11), or the object is shared with
 * another registry entry (a certificate registered for the same private key), the stop falls back to the registry alone: it waits the
 * propagation bound (registry.refreshIntervalMs + a margin) before it is acknowledged, logs it, and says so.
 */

/** What tells a module that does not let CKA_SIGN change from one that failed: the refusal of the change itself. */
const MODULE_REFUSES = new Set<number>([
  pkcs11js.CKR_ATTRIBUTE_READ_ONLY,
  0x1b, // CKR_ACTION_PROHIBITED (PKCS#11 2.40; not in pkcs11js)
  pkcs11js.CKR_ATTRIBUTE_TYPE_INVALID,
  pkcs11js.CKR_ATTRIBUTE_VALUE_INVALID,
  pkcs11js.CKR_TEMPLATE_INCONSISTENT,
  pkcs11js.CKR_FUNCTION_NOT_SUPPORTED,
  pkcs11js.CKR_SESSION_READ_ONLY,
  pkcs11js.CKR_KEY_FUNCTION_NOT_PERMITTED,
]);

/** How long a change takes to reach every replica through the registry alone: the poll, plus a margin for the re-read. */
export const propagationBoundMs = (refreshIntervalMs: number): number => refreshIntervalMs + 1000;

interface SigningGateOptions {
  /** How long to wait before acknowledging a stop that the token could not enforce (see `propagationBoundMs`). */
  propagationBoundMs: number;
  log: { info(m: string, meta?: Record<string, unknown>): void; warn(m: string, meta?: Record<string, unknown>): void; error(m: string, meta?: Record<string, unknown>): void };
  /** Told, in words for the operator, when a stop is acknowledged only after waiting the bound (the CLI prints it); else it is logged. */
  notice?: (message: string) => void;
  sleep?: (ms: number) => Promise<void>;
  /** What the token's deep capability probe found, when it ran (`whyTokenCannotStop` reads it). */
  capabilitiesOf?: (tokenName: string) => DeepCapabilities | undefined;
}

/**
 * Why the deep probe says this token cannot stop a key of this spec by itself, or undefined when it can or nobody
 * measured: its module does not show other processes what this one changes (tpm2-pkcs11, nShield by default: CKA_SIGN
 * set here would hold in this process only), or it refused CKA_SIGN = false on such a key, or took it and signed.
 */
export function whyTokenCannotStop(deep: DeepCapabilities | undefined, keySpec: string): string | undefined {
  if (deep?.sharedObjects.startsWith('not seen')) return 'its module does not show other processes what this one changes (measured by the capability probe)';
  const stop = deep?.keyPairs[keySpec]?.stopSigning;
  if (stop !== undefined && stop !== 'ok') return `its capability probe found CKA_SIGN = false on a ${keySpec} key ${stop}`;
  return undefined;
}

/** How a stop was made to hold everywhere: by the token, or by waiting out the registry's propagation bound. */
type StopEnforcement = 'token' | 'waited';

const refOf = (v: { label: string; id?: string }): KeyRef => ({ label: v.label, ...(v.id ? { id: v.id } : {}) });
const sameObject = (a: { token: string; label: string; id?: string }, b: { token: string; label: string; id?: string }): boolean =>
  a.token === b.token && a.label === b.label && (a.id === undefined || b.id === undefined || a.id.toLowerCase() === b.id.toLowerCase());

/** The versions of `key` whose private key object another registry entry (a certificate, another key) names too. */
function sharedVersions(snapshot: RegistrySnapshot, key: KeyRecord): Set<string> {
  const shared = new Set<string>();
  const others = [
    ...snapshot.registry.all().filter((k) => k.keyId !== key.keyId).flatMap((k) => k.versions.map((v) => ({ token: k.token, label: v.label, id: v.id }))),
    ...snapshot.registry.certificates().map((c) => ({ token: c.token, label: c.label, id: c.id })),
  ];
  for (const v of key.versions) {
    if (others.some((o) => sameObject(o, { token: key.token, label: v.label, id: v.id }))) shared.add(v.keyVersionId);
  }
  return shared;
}

export class SigningGate {
  private readonly sleep: (ms: number) => Promise<void>;

  constructor(
    private readonly source: RegistrySource,
    private readonly tokenOf: (name: string) => Token,
    private readonly options: SigningGateOptions,
  ) {
    this.sleep = options.sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms)));
  }

  /**
   * After a stop was recorded: CKA_SIGN false on every version of the key. When the token cannot (the module refuses,
   * the token is away, the object is shared), waits the propagation bound instead; either way, from the return on no
   * replica signs with the key.
   */
  async stop(key: KeyRecord, snapshot: RegistrySnapshot): Promise<StopEnforcement> {
    const shared = sharedVersions(snapshot, key);
    const refs = key.versions.filter((v) => !shared.has(v.keyVersionId)).map(refOf);
    let reason: string | undefined = shared.size > 0 ? `its private key is also named by another registry entry (a certificate), which still signs` : undefined;
    if (refs.length > 0) {
      try {
        await this.tokenOf(key.token).setSigning(refs, false);
      } catch (err) {
        reason = this.whyNot(err);
      }
    }
    reason ??= whyTokenCannotStop(this.options.capabilitiesOf?.(key.token), key.keySpec);
    if (reason === undefined) return 'token';
    const waitMs = this.options.propagationBoundMs;
    if (this.options.notice) {
      this.options.notice(`the token could not refuse key ${key.keyId} itself (${reason}): waiting ${waitMs} ms, the registry's propagation bound, so that every gateway has stopped signing with it`);
    } else {
      this.options.log.warn('a key was stopped in the registry only: the token did not take CKA_SIGN = false; waiting the propagation bound before acknowledging', {
        keyId: key.keyId,
        reason,
        waitMs,
      });
    }
    await this.sleep(waitMs);
    return 'waited';
  }

  /**
   * After a change recorded the key Enabled: CKA_SIGN true on its versions, only if a fresh read of the record still
   * says Enabled, and back to false if a stop was recorded meanwhile. A module that does not let CKA_SIGN change never
   * had it set false: nothing to do. Any other failure is the caller's (the record says Enabled; repeating the
   * change repairs it).
   */
  async allow(keyId: string): Promise<void> {
    let token: Token | undefined;
    let refs: KeyRef[] = [];
    try {
      await this.source.change(async (fresh) => {
        const key = fresh.registry.key(keyId);
        if (!key || key.state !== 'Enabled') return;
        token = this.tokenOf(key.token);
        refs = key.versions.map(refOf);
        await token.setSigning(refs, true);
      });
      if (!token) return;
      const now = await this.source.change((fresh) => fresh.registry.key(keyId)?.state);
      if (now !== 'Enabled') await token.setSigning(refs, false);
    } catch (err) {
      const ckr = ckrOf(err);
      if (ckr !== undefined && MODULE_REFUSES.has(ckr)) return;
      if (err instanceof LifecycleError) throw err;
      throw new LifecycleError('unavailable', `key ${keyId} is Enabled in the registry, but the token did not let it sign again (${this.whyNot(err)}); repeat the change`);
    }
  }

  /**
   * Start-up repair: every key kept in the registry gets the CKA_SIGN its state says. Per token, one pass sets it false
   * on every key that may not sign (a stop only ever refuses more) and one pass reads it on the others; a key recorded
   * Enabled whose object refuses is let sign through `allow`, with its fresh reads. Objects shared with another entry
   * are left alone. Returns the objects set to refuse, the keys let sign again, and the keys that could not be checked.
   */
  async reconcile(snapshot: RegistrySnapshot): Promise<{ stopped: number; allowed: number; failed: number }> {
    const outcome = { stopped: 0, allowed: 0, failed: 0 };
    const byToken = new Map<string, Array<{ key: KeyRecord; refs: KeyRef[] }>>();
    for (const key of snapshot.registry.all()) {
      if (!snapshot.onToken.keys.has(key.keyId)) continue;
      const shared = sharedVersions(snapshot, key);
      const refs = key.versions.filter((v) => !shared.has(v.keyVersionId)).map(refOf);
      if (refs.length > 0) byToken.set(key.token, [...(byToken.get(key.token) ?? []), { key, refs }]);
    }
    for (const [tokenName, keys] of byToken) {
      const stopped = keys.filter((k) => k.key.state !== 'Enabled');
      const enabled = keys.filter((k) => k.key.state === 'Enabled');
      try {
        const token = this.tokenOf(tokenName);
        if (stopped.length > 0) outcome.stopped += (await token.setSigning(stopped.flatMap((k) => k.refs), false)).changed;
        const allowed = enabled.length > 0 ? await token.signingAllowed(enabled.flatMap((k) => k.refs)) : [];
        let at = 0;
        for (const { key, refs } of enabled) {
          const refuses = allowed.slice(at, (at += refs.length)).some((a) => !a);
          if (!refuses) continue;
          this.options.log.warn('a key recorded Enabled was refused by its token (CKA_SIGN false): an enable cut off half-way, or a change made outside the gateway; letting it sign', { keyId: key.keyId });
          await this.allow(key.keyId);
          outcome.allowed++;
        }
      } catch (err) {
        outcome.failed += keys.length;
        this.options.log.warn('could not bring CKA_SIGN of the keys on a token in line with their state', { token: tokenName, reason: this.whyNot(err) });
      }
    }
    return outcome;
  }

  private whyNot(err: unknown): string {
    const ckr = ckrOf(err);
    if (ckr !== undefined && MODULE_REFUSES.has(ckr)) return `the module does not let CKA_SIGN change: ${ckrName(ckr)}`;
    if (ckr !== undefined) return ckrName(ckr);
    return err instanceof Error ? err.message : String(err);
  }
}
