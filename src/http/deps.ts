import type { CertificateMaterial } from '../keys/certificate-store.js';
import type { KeyLifecycle } from '../keys/lifecycle.js';
import type { KeyRegistry } from '../keys/registry.js';
import type { RegistryState } from '../keys/store-state.js';
import type { Logger } from '../observability/logger.js';
import type { GatewayMetrics } from '../observability/metrics.js';
import type { SigningPlans } from '../signing/plan.js';
import type { Signer } from '../signing/signer.js';
import type { AccountLimiter } from '../throttle/account-limiter.js';
import type { AuthOptions } from './auth/authenticate.js';
import type { FailedAuthLimiter } from './auth/failed-auth-limiter.js';
import type { ReplayCheck } from './auth/replay-guard.js';

/**
 * What the HTTP layer is given (server.ts builds it). The registry fields and the credentials are swapped in place when
 * the registry changes: each request reads them once, when it starts.
 */
export interface AppDeps {
  auth: AuthOptions;
  /** The nonce check: this replica's guard, and the one shared by replicas or cluster workers, if any. */
  replay: ReplayCheck;
  /** True once shutdown has begun. */
  draining?: () => boolean;
  limiter: AccountLimiter;
  metrics?: GatewayMetrics;
  /** Hash-chained audit file, when configured: `write` resolves once the OS has the line, rejects when it cannot. */
  audit?: {
    write(record: Record<string, string | number | boolean | undefined>): Promise<unknown>;
    status(): { ok: boolean; detail: string };
  };
  /** Failed authentications per client address, refused with 429 past their budget. */
  failedAuth?: FailedAuthLimiter;
  regionId: string;
  registry: KeyRegistry;
  /** Key lifecycle (CreateKey, DisableKey, aliases…) on the token-kept registry. */
  lifecycle?: KeyLifecycle;
  /**
   * Whether the registry is loaded (requests answer 503 and /readyz 503 until it is) and how its store is doing
   * (the management listener's /readyz).
   */
  registryState?: () => RegistryState;
  /**
   * While this process reads a registry change it was told of (another worker's or replica's, acknowledged already):
   * what a request waits for before it authenticates and reads the registry. Undefined when none is being read.
   */
  registryCatchingUp?: () => Promise<void> | undefined;
  certificates: ReadonlyMap<string, CertificateMaterial>;
  publicKeys: ReadonlyMap<string, string>;
  /** CAS compatibility switch (2024 document): is this account's RAW Message Base64? */
  casRawMessageIsBase64: (account: string) => boolean;
  plans: ReadonlyMap<string, SigningPlans>;
  signer: Signer;
  /** The tokens' health, as /readyz reports it. */
  tokens: ReadonlyMap<string, { probe(): Promise<{ ok: boolean; detail: string }> }>;
  log: Logger;
  maxBodyBytes: number;
  /** Base of every error body's `Recommend` link (`errors.recommendBaseUrl`); the code's anchor is appended. */
  recommendBaseUrl: string;
}
