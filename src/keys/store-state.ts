/**
 * Whether the registry's store (PostgreSQL, registry.store: postgres) answers, as this process last found it: up when
 * its last call reached the database, away since the first failed call of the current outage. The gauge
 * hsm_gateway_registry_store_up and the management listener's /readyz read it; the API port says nothing of it.
 */
export interface StoreStatus {
  up: boolean;
  /** When the current outage began (absent while up). */
  awaySince?: Date;
  /** Why the last call failed: for operators (the management listener), never for API clients. */
  detail?: string;
}

/** The registry as /readyz and the request gate see it. */
export interface RegistryState {
  store: 'token' | 'file' | 'postgres';
  /**
   * False only while a gateway whose store was away at start-up has not loaded the registry yet: it answers 503 and
   * is not ready. A store lost later leaves the loaded registry serving (`loaded` stays true).
   */
  loaded: boolean;
  /** registry.store: postgres only. */
  storeStatus?: StoreStatus;
}

export class StoreState {
  private state: StoreStatus;

  constructor(private readonly now: () => Date = () => new Date()) {
    this.state = { up: false, awaySince: now(), detail: 'not reached yet' };
  }

  reached(): void {
    if (!this.state.up) this.state = { up: true };
  }

  failed(err: unknown): void {
    this.state = { up: false, awaySince: this.state.awaySince ?? this.now(), detail: (err as Error)?.message ?? String(err) };
  }

  status(): StoreStatus {
    return this.state;
  }
}
