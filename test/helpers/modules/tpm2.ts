import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { digits, findCommand, findLibrary, freePortPair, missing, ModuleUnavailableError, run, startDaemon, tcpOpen, type Daemon, type ModuleInstance } from './common.js';

export function tpm2Missing(): string | undefined {
  return missing([
    ['pkcs11/libtpm2_pkcs11.so', findLibrary('pkcs11/libtpm2_pkcs11.so'), 'libtpm2-pkcs11-1'],
    ['tpm2_ptool', findCommand('tpm2_ptool'), 'libtpm2-pkcs11-tools'],
    ['swtpm', findCommand('swtpm'), 'swtpm'],
    ['tpm2-abrmd', findCommand('tpm2-abrmd'), 'tpm2-abrmd'],
    ['libtss2-tcti-tabrmd.so.0', findLibrary('libtss2-tcti-tabrmd.so.0'), 'libtss2-tcti-tabrmd0'],
    ['libtss2-tcti-swtpm.so.0', findLibrary('libtss2-tcti-swtpm.so.0'), 'libtss2-tcti-swtpm0'],
    ['dbus-daemon', findCommand('dbus-daemon'), 'dbus'],
    ['dbus-send', findCommand('dbus-send'), 'dbus'],
  ]);
}

const TABRMD_NAME = 'com.intel.tss2.Tabrmd';

/** A private D-Bus bus on a socket in `dir`: tpm2-abrmd owns its name there, nobody else's bus is touched. */
function busConfig(socket: string): string {
  return `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=${socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
`;
}

/**
 * tpm2-pkcs11 on a software TPM: swtpm (TCP, a state directory of its own), tpm2-abrmd, the resource manager (a TPM
 * holds ~3 transient objects: without one, tpm2-pkcs11 runs out of slots), on a private D-Bus bus, and a tpm2-pkcs11
 * store (SQLite) made by tpm2_ptool init + addtoken. The module finds the TPM through TPM2_PKCS11_TCTI (the tabrmd
 * TCTI on the session bus named by DBUS_SESSION_BUS_ADDRESS) and its store through TPM2_PKCS11_STORE. The backend is
 * tpm2-abrmd: stopping it cuts the module off the TPM.
 */
export async function startTpm2(): Promise<ModuleInstance> {
  const reason = tpm2Missing();
  if (reason) throw new ModuleUnavailableError('tpm2', reason);
  const modulePath = findLibrary('pkcs11/libtpm2_pkcs11.so')!;
  const dir = mkdtempSync(join(tmpdir(), 'hsm-gateway-matrix-tpm2-'));
  const daemons: Daemon[] = [];
  let abrmd: Daemon | undefined;
  const closeAll = async (): Promise<void> => {
    await abrmd?.stop();
    for (const d of daemons.reverse()) await d.stop();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const state = join(dir, 'tpm-state');
    const store = join(dir, 'store');
    mkdirSync(state);
    mkdirSync(store);
    const port = await freePortPair();
    daemons.push(
      await startDaemon(
        'swtpm',
        'swtpm',
        ['socket', '--tpm2', '--server', `type=tcp,port=${port},bindaddr=127.0.0.1`, '--ctrl', `type=tcp,port=${port + 1},bindaddr=127.0.0.1`, '--flags', 'not-need-init,startup-clear', '--tpmstate', `dir=${state}`],
        { ready: () => tcpOpen(port + 1) },
      ),
    );
    const busSocket = join(dir, 'bus');
    const busConf = join(dir, 'bus.conf');
    writeFileSync(busConf, busConfig(busSocket));
    daemons.push(await startDaemon('dbus-daemon', 'dbus-daemon', ['--nofork', `--config-file=${busConf}`, '--print-address=1'], { ready: (out) => out.includes('unix:path=') }));
    const busAddress = `unix:path=${busSocket}`;
    const env: Record<string, string> = {
      DBUS_SESSION_BUS_ADDRESS: busAddress,
      TPM2_PKCS11_TCTI: 'tabrmd:bus_type=session',
      TPM2_PKCS11_STORE: store,
      // tpm2_ptool runs tpm2-tools (tpm2_createprimary …), which read their own variable.
      TPM2TOOLS_TCTI: 'tabrmd:bus_type=session',
      // Quiet: tpm2-pkcs11 and the TSS log every refused call to stderr (the tests record the CKR instead).
      TPM2_PKCS11_LOG_LEVEL: '0',
      TSS2_LOG: 'all+NONE',
    };
    const tabrmdOwned = (): boolean =>
      run('dbus-send', ['--session', '--print-reply', '--dest=org.freedesktop.DBus', '/org/freedesktop/DBus', 'org.freedesktop.DBus.NameHasOwner', `string:${TABRMD_NAME}`], {
        env,
        allowFailure: true,
      }).stdout.includes('boolean true');
    const startAbrmd = async (): Promise<void> => {
      // --allow-root: these tests may run as root; --flush-all: no transient object of an earlier run stays loaded.
      abrmd = await startDaemon('tpm2-abrmd', 'tpm2-abrmd', ['--session', '--allow-root', '--flush-all', `--tcti=swtpm:host=127.0.0.1,port=${port}`], {
        env,
        ready: tabrmdOwned,
      });
    };
    await startAbrmd();
    const tokenLabel = 'matrix-tpm2';
    const pin = digits(8);
    const soPin = digits(8);
    run('tpm2_ptool', ['init', `--path=${store}`], { env });
    run('tpm2_ptool', ['addtoken', '--pid=1', `--label=${tokenLabel}`, `--sopin=${soPin}`, `--userpin=${pin}`, `--path=${store}`], { env });
    return {
      name: 'tpm2',
      title: 'tpm2-pkcs11 → tpm2-abrmd → swtpm',
      modulePath,
      tokenLabel,
      pin,
      soPin,
      env,
      dir,
      backend: {
        name: 'tpm2-abrmd',
        stop: async () => {
          await abrmd?.stop();
          abrmd = undefined;
        },
        start: startAbrmd,
      },
      async toolKeyPair(spec, label, idHex) {
        const algorithm = spec === 'RSA_2048' ? 'rsa2048' : 'ecc256';
        run('tpm2_ptool', ['addkey', `--label=${tokenLabel}`, `--key-label=${label}`, `--id=${idHex}`, `--userpin=${pin}`, `--algorithm=${algorithm}`, `--path=${store}`], { env });
        // Not its idHex: tpm2_ptool does not store --id as those bytes (keys import --label L --id <idHex> found no key).
        return { tool: `tpm2_ptool addkey --algorithm=${algorithm}`, label };
      },
      close: closeAll,
    };
  } catch (err) {
    await closeAll();
    throw err;
  }
}
