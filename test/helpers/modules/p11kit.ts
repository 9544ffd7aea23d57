import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findCommand, findLibrary, missing, ModuleUnavailableError, pkcs11ToolKeyPair, startDaemon, type Daemon, type ModuleInstance } from './common.js';
import { makeSoftHsmToken, SOFTHSM_MODULE, softhsmMissing } from './softhsm.js';

export function p11kitMissing(): string | undefined {
  return (
    missing([
      ['p11-kit', findCommand('p11-kit'), 'p11-kit'],
      ['pkcs11/p11-kit-client.so', findLibrary('pkcs11/p11-kit-client.so'), 'p11-kit-modules'],
    ]) ?? softhsmMissing()
  );
}

/**
 * p11-kit's PKCS#11 remoting: `p11-kit server` exports one SoftHSMv2 token on a UNIX socket in the instance's
 * directory; the module the gateway loads is p11-kit-client.so, which finds the server through
 * P11_KIT_SERVER_ADDRESS. The server is the backend: stopping it is the remote HSM going away.
 */
export async function startP11Kit(): Promise<ModuleInstance> {
  const reason = p11kitMissing();
  if (reason) throw new ModuleUnavailableError('p11-kit', reason);
  const client = findLibrary('pkcs11/p11-kit-client.so')!;
  const dir = mkdtempSync(join(tmpdir(), 'hsm-gateway-matrix-p11kit-'));
  const tokenLabel = 'matrix-p11kit';
  const { conf, pin, soPin } = makeSoftHsmToken(dir, tokenLabel);
  const socket = join(dir, 'p11-kit.sock');
  const env = { P11_KIT_SERVER_ADDRESS: `unix:path=${socket}` };
  let server: Daemon | undefined;
  const startServer = async (): Promise<void> => {
    // -f: in the foreground, this process's child; it prints the address (and its pid) once it listens.
    server = await startDaemon('p11-kit server', 'p11-kit', ['server', '-f', '-n', socket, '--provider', SOFTHSM_MODULE, `pkcs11:token=${tokenLabel}`], {
      env: { SOFTHSM2_CONF: conf },
      ready: (out) => out.includes('P11_KIT_SERVER_ADDRESS='),
      // The server forks one process per client connection: losing the server means losing those too.
      processGroup: true,
    });
  };
  try {
    await startServer();
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    name: 'p11-kit',
    title: 'p11-kit client → p11-kit server → SoftHSMv2',
    modulePath: client,
    tokenLabel,
    pin,
    soPin,
    env,
    dir,
    backend: {
      name: 'p11-kit server',
      stop: async () => {
        await server?.stop();
        server = undefined;
      },
      start: startServer,
    },
    async toolKeyPair(spec, label, idHex) {
      return pkcs11ToolKeyPair(client, ['--token-label', tokenLabel], pin, spec, label, idHex, env);
    },
    async close() {
      await server?.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
