/**
 * registry.store: postgres with the database away at start-up: the gateway starts anyway, answers 503 and is not
 * ready, and tries to load the registry again — after 0.5 s, then doubling up to 30 s between attempts — until it
 * loads (or the LISTEN connection's resync loaded it first). A database that stays away for an hour costs a few
 * hundred connection attempts, not thousands, and the log says each kind of failure once, not each attempt.
 */
interface RetryOptions {
  firstDelayMs: number;
  maxDelayMs: number;
}

const BACKOFF: RetryOptions = { firstDelayMs: 500, maxDelayMs: 30_000 };

/** What an operator does about the usual kinds of failure (the SQLSTATE or errno of the cause). */
const HINTS: Readonly<Record<string, string>> = {
  ECONNREFUSED: 'nothing listens at registry.postgres.url (PostgreSQL down or not started yet)',
  ENOTFOUND: 'the host of registry.postgres.url is not known (DNS)',
  '28P01': 'PostgreSQL refused the password (registry.postgres.password)',
  '3D000': 'the database named in registry.postgres.url does not exist',
  '42P01': 'the registry schema is missing: run "hsm-gateway registry init" once',
};

interface Log {
  info(m: string, meta?: Record<string, unknown>): void;
  warn(m: string, meta?: Record<string, unknown>): void;
}

/** The kind of a failure: its cause's SQLSTATE or errno when it has one (the message varies with host and port). */
function kindOf(err: unknown): { kind: string; message: string; hint?: string } {
  const cause = (err as { cause?: { code?: unknown; message?: unknown } })?.cause;
  // The cause's words for the log (the address that refused, the missing relation); the message alone is what a client sees.
  const message = [(err as Error)?.message ?? String(err), typeof cause?.message === 'string' ? cause.message : undefined].filter(Boolean).join(': ');
  const code = cause?.code;
  const kind = typeof code === 'string' ? code : message;
  return { kind, message, ...(HINTS[kind] ? { hint: HINTS[kind] } : {}) };
}

/**
 * Retries `attempt` until `loaded()` holds. `firstError`: why the start-up load failed (attempt 1). `done` resolves
 * true once loaded, false when closed first. `loadedElsewhere()`: another path loaded it (the caller's change
 * listener says so): no further attempt, and the log says so now rather than at the next attempt's time.
 */
export function retryFirstLoad(
  attempt: () => Promise<unknown>,
  loaded: () => boolean,
  firstError: unknown,
  log: Log,
  options: RetryOptions = BACKOFF,
): { close(): void; loadedElsewhere(): void; done: Promise<boolean> } {
  const started = Date.now();
  let attempts = 1;
  let delay = options.firstDelayMs;
  let lastKind: string | undefined;
  let closed = false;
  let finished = false;
  let timer: NodeJS.Timeout | undefined;
  let finish!: (loaded: boolean) => void;
  const done = new Promise<boolean>((resolve) => (finish = resolve));

  const failed = (err: unknown): void => {
    const { kind, message, hint } = kindOf(err);
    if (kind !== lastKind) {
      log.warn('the key registry could not be loaded: not ready, answering 503, retrying with backoff (logged again only when the reason changes)', {
        error: message,
        ...(hint ? { hint } : {}),
        attempts,
        nextAttemptInMs: delay,
      });
    }
    lastKind = kind;
    timer = setTimeout(() => void run(), delay);
    delay = Math.min(delay * 2, options.maxDelayMs);
  };

  const run = async (): Promise<void> => {
    timer = undefined;
    if (closed) return;
    if (!loaded()) {
      attempts++;
      try {
        await attempt();
      } catch (err) {
        if (!closed && !loaded()) failed(err);
        else if (!closed) succeeded();
        return;
      }
    }
    if (!closed) succeeded();
  };

  const succeeded = (): void => {
    if (finished) return;
    finished = true;
    if (timer) clearTimeout(timer);
    log.info('key registry loaded: ready', { attempts, afterMs: Date.now() - started });
    finish(true);
  };

  failed(firstError);
  return {
    close() {
      closed = true;
      finished = true;
      if (timer) clearTimeout(timer);
      finish(false);
    },
    loadedElsewhere() {
      if (!closed && loaded()) succeeded();
    },
    done,
  };
}
