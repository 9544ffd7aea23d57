/**
 * Keeps one process's registry writes apart from its registry reads on the same module: no read is in progress while a
 * write is being made, and the other way round (both are jobs off the event loop, on libuv's threads); and keeps a
 * re-initialization of the module apart from every registry session in use (`alone`).
 *
 * Across processes a PKCS#11 module keeps its own objects consistent (SoftHSMv2 locks each object's file). Inside one
 * process SoftHSMv2 2.6.1 does not: a search in one thread skips an object that another thread is writing at that
 * moment, and its reading can leave the writer's object invalid, so the write fails with CKR_GENERAL_ERROR (seen
 * with its syslog while a key was generated during a search: "Could not initialize the attribute"). A change's look
 * that skipped a rival's pending object would acknowledge both. Two RegistrySources in one process (the tests'
 * replicas) meet here; one gateway process has one, and its poll is serialized with its changes anyway.
 *
 * A read is a section (a search and the reads of what it found, which another writer's commit in between would
 * tear: a pending object read before its commit and the older revision gone after it). A write holds the gate from
 * `hold()` (which waits for the read sections in flight) to `release()`; read sections that start meanwhile wait.
 * One gate per module path, shared by every RegistrySource of the process.
 *
 * A re-initialization (C_Finalize + C_Initialize) ends every session of the module in the process, another
 * RegistrySource's too: a change of the other one between its read and its write failed with CKR_SESSION_HANDLE_INVALID
 * (the tests' two replicas in one process). So a RegistrySource's work on a session of its own (a change, a read, the
 * poll's look at the marker) is a `use`, and a re-initialization runs `alone`: once no use is in flight, while new
 * ones wait. Reads and holds are made inside uses and do not wait for `alone`, so a use in flight always ends.
 */
export class StoreGate {
  private readsInFlight = 0;
  private held: Promise<void> | undefined;
  private releaseHeld: (() => void) | undefined;
  private drained: Array<() => void> = [];
  private usesInFlight = 0;
  private lone: Promise<void> | undefined;
  private unused: Array<() => void> = [];

  /** Runs work on a session of the module once no re-initialization runs (alone). */
  async use<T>(job: () => Promise<T>): Promise<T> {
    while (this.lone) await this.lone;
    this.usesInFlight++;
    try {
      return await job();
    } finally {
      if (--this.usesInFlight === 0) for (const wake of this.unused.splice(0)) wake();
    }
  }

  /** Runs `job` (a re-initialization) once no use is in flight; uses that start meanwhile wait for it. */
  async alone<T>(job: () => Promise<T>): Promise<T> {
    while (this.lone) await this.lone;
    let done: () => void = () => undefined;
    this.lone = new Promise<void>((resolve) => (done = resolve));
    try {
      if (this.usesInFlight > 0) await new Promise<void>((resolve) => this.unused.push(resolve));
      return await job();
    } finally {
      this.lone = undefined;
      done();
    }
  }

  /** Runs a read section once no write holds the gate. */
  async read<T>(job: () => Promise<T>): Promise<T> {
    while (this.held) await this.held;
    this.readsInFlight++;
    try {
      return await job();
    } finally {
      if (--this.readsInFlight === 0) for (const wake of this.drained.splice(0)) wake();
    }
  }

  /** Waits for the reads in flight and any other holder, then holds the gate: no read starts until release(). */
  async hold(): Promise<void> {
    while (this.held) await this.held;
    this.held = new Promise<void>((resolve) => (this.releaseHeld = resolve));
    if (this.readsInFlight > 0) await new Promise<void>((resolve) => this.drained.push(resolve));
  }

  release(): void {
    const wake = this.releaseHeld;
    this.held = undefined;
    this.releaseHeld = undefined;
    wake?.();
  }
}

const gates = new Map<string, StoreGate>();

/** The gate of this module in this process. */
export function storeGateOf(modulePath: string): StoreGate {
  let gate = gates.get(modulePath);
  if (!gate) gates.set(modulePath, (gate = new StoreGate()));
  return gate;
}

