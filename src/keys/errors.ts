/**
 * The typed errors of the key layer. They live apart from the code that throws them so that anything may catch or
 * throw one (the change lock, the cluster primary, the operations' error mapping, the CLI) without loading the
 * lifecycle, the registry source or the token behind them.
 */

/** Why a registry change (key, alias, certificate or access key) was refused. */
export type LifecycleErrorKind =
  | 'key-not-found'
  | 'alias-not-found'
  | 'alias-exists'
  /** Bring your own key: the key pair is already registered. */
  | 'key-exists'
  | 'access-key-not-found'
  | 'invalid-state'
  | 'invalid'
  | 'not-on-token'
  | 'unsupported'
  | 'unavailable'
  /** Another writer changed a record this change read (registry.store: postgres): nothing was made. */
  | 'conflict'
  | 'certificate-not-found'
  | 'certificate-exists';

export class LifecycleError extends Error {
  constructor(
    readonly kind: LifecycleErrorKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'LifecycleError';
  }
}

/** The registry (file or token records) cannot be read or is inconsistent: a configuration problem. */
export class RegistryError extends Error {}

/** `registry migrate` into a store that already holds records: nothing was written (the counts say what is there). */
export class RegistryNotEmptyError extends Error {
  constructor(
    readonly store: string,
    readonly present: Readonly<Record<string, number>>,
  ) {
    const what = Object.entries(present)
      .map(([kind, n]) => `${n} ${kind} record${n === 1 ? '' : 's'}`)
      .join(', ');
    super(`the ${store} registry is not empty (${what}): registry migrate only fills an empty one; nothing was written`);
    this.name = 'RegistryNotEmptyError';
  }
}
