import { readFileSync } from 'node:fs';
import type { Server } from 'node:net';

type RefusalReason = 'max_connections' | 'per_address';

interface ConnectionLimits {
  /** Open connections on the listener; absent: no limit. */
  max?: number;
  /** Open connections from one client address; absent: no limit. */
  perAddress?: number;
}

/**
 * Closes a new connection at once when the listener already holds `max` connections, or `perAddress` from the same
 * address. Counted here rather than with net.Server's maxConnections: in a node:cluster worker a connection refused
 * that way goes back to the primary, which hands it to another worker, and round again while all are full; and
 * net.Server refuses silently.
 */
export function limitConnections(server: Server, limits: ConnectionLimits, refused: (reason: RefusalReason, address: string) => void): void {
  let open = 0;
  // One entry per address with an open connection: never more entries than open connections (≤ max).
  const byAddress = new Map<string, number>();
  server.on('connection', (socket) => {
    const address = socket.remoteAddress ?? '';
    const fromAddress = byAddress.get(address) ?? 0;
    const reason: RefusalReason | undefined =
      limits.max !== undefined && open >= limits.max
        ? 'max_connections'
        : limits.perAddress !== undefined && fromAddress >= limits.perAddress
          ? 'per_address'
          : undefined;
    if (reason) {
      socket.destroy();
      refused(reason, address);
      return;
    }
    open++;
    byAddress.set(address, fromAddress + 1);
    socket.once('close', () => {
      open--;
      const left = byAddress.get(address)! - 1;
      if (left === 0) byAddress.delete(address);
      else byAddress.set(address, left);
    });
  });
}

/**
 * The default `server.maxConnections`: what the open-file limit leaves after a reserve for the token, the audit trail,
 * Redis and the logs (limit − 128, or half the limit when it is 256 or less). Undefined when the limit is unknown or
 * unlimited.
 */
export function defaultMaxConnections(limitsFile = '/proc/self/limits'): number | undefined {
  let text: string;
  try {
    text = readFileSync(limitsFile, 'utf8');
  } catch {
    return undefined;
  }
  const soft = /^Max open files\s+(\d+|unlimited)/m.exec(text)?.[1];
  if (soft === undefined || soft === 'unlimited') return undefined;
  const limit = Number(soft);
  return limit > 256 ? limit - 128 : Math.max(1, Math.floor(limit / 2));
}

interface WarnLog {
  warn(message: string, meta: Record<string, unknown>): void;
}

/**
 * Refused connections, logged at most once per window: the first at once, the rest of the window summed into one
 * line at its end. A flood must be visible, and must not turn into a flood of log lines.
 */
export class RefusedConnectionsLog {
  private readonly counts = new Map<RefusalReason, number>();
  private readonly addresses = new Set<string>();
  private quietUntil = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly log: WarnLog,
    private readonly limits: ConnectionLimits,
    private readonly windowMs = 10_000,
  ) {}

  refused(reason: RefusalReason, address: string): void {
    this.counts.set(reason, (this.counts.get(reason) ?? 0) + 1);
    if (this.addresses.size < 5) this.addresses.add(address);
    if (this.timer) return;
    const wait = this.quietUntil - Date.now();
    if (wait <= 0) this.flush();
    else this.timer = setTimeout(() => this.flush(), wait).unref();
  }

  /** Logs what is pending now (also at shutdown). */
  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.counts.size === 0) return;
    this.log.warn('connections refused', {
      refused: Object.fromEntries(this.counts),
      addresses: [...this.addresses],
      maxConnections: this.limits.max,
      maxConnectionsPerAddress: this.limits.perAddress,
    });
    this.counts.clear();
    this.addresses.clear();
    this.quietUntil = Date.now() + this.windowMs;
  }
}
