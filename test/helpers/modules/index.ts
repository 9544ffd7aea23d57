import { ModuleUnavailableError, type ModuleInstance, type ModuleName } from './common.js';
import { nssMissing, startNss } from './nss.js';
import { opencryptokiMissing, startOpenCryptoki } from './opencryptoki.js';
import { p11kitMissing, startP11Kit } from './p11kit.js';
import { softhsmMissing, startSoftHsm } from './softhsm.js';
import { startTpm2, tpm2Missing } from './tpm2.js';

export { type ModuleInstance, type ModuleName } from './common.js';

/** The module matrix: how to bring up each module, and why it cannot run here (undefined: it can). */
export const MODULES: ReadonlyArray<{ name: ModuleName; missing(): string | undefined; start(): Promise<ModuleInstance> }> = [
  { name: 'softhsm', missing: softhsmMissing, start: startSoftHsm },
  { name: 'opencryptoki', missing: opencryptokiMissing, start: startOpenCryptoki },
  { name: 'tpm2', missing: tpm2Missing, start: startTpm2 },
  { name: 'p11-kit', missing: p11kitMissing, start: startP11Kit },
  { name: 'nss', missing: nssMissing, start: startNss },
];

/** Starts a module, or returns why it cannot run here. */
export async function tryStart(name: ModuleName): Promise<ModuleInstance | { unavailable: string }> {
  const module = MODULES.find((m) => m.name === name)!;
  try {
    return await module.start();
  } catch (err) {
    if (err instanceof ModuleUnavailableError) return { unavailable: err.message };
    throw err;
  }
}
