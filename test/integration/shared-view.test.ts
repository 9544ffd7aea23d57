import pkcs11js from 'pkcs11js';
import { afterAll, describe, expect, it } from 'vitest';
import { findObjects } from '../../src/hsm/objects.js';
import { seesOtherProcessesObjects } from '../../src/hsm/shared-view.js';
import { tryStart, type ModuleInstance, type ModuleName } from '../helpers/modules/index.js';
import { RawToken } from '../helpers/modules/probes.js';

// Issue #15 item 5: does a module show a process the token objects another process wrote after it was initialized?
// Measured on the real modules (SoftHSMv2 does; tpm2-pkcs11 reads its store once, at C_Initialize). The probe is
// src/hsm/shared-view.ts, which the gateway runs at start-up before it keeps its registry on a token.

const probeObjects = (t: RawToken): number =>
  findObjects(t.p11, t.session, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA }, { type: pkcs11js.CKA_TOKEN, value: true }])
    .map((h) => (t.p11.C_GetAttributeValue(t.session, h, [{ type: pkcs11js.CKA_LABEL }])[0]!.value as Buffer).toString())
    .filter((label) => label.startsWith('hsm-gateway/shared-view-probe/')).length;

for (const [name, expected] of [
  ['softhsm', true],
  ['tpm2', false],
] as Array<[ModuleName, boolean]>) {
  describe(`module ${name}`, () => {
    let inst: ModuleInstance | undefined;
    let t: RawToken | undefined;
    const saved: Record<string, string | undefined> = {};

    afterAll(async () => {
      t?.finalize();
      await inst?.close();
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    });

    it(`when a second process writes a data object, then the probe says shared: ${expected}, and no probe object stays on the token`, async (ctx) => {
      const started = await tryStart(name);
      if ('unavailable' in started) return ctx.skip(started.unavailable);
      inst = started;
      for (const [k, v] of Object.entries(inst.env)) {
        saved[k] = process.env[k];
        process.env[k] = v;
      }
      t = new RawToken(inst);
      t.open();
      const raw = t;
      const view = await seesOtherProcessesObjects(
        { modulePath: inst.modulePath, tokenLabel: inst.tokenLabel, pin: inst.pin, ...(inst.initArgs ? { initArgs: inst.initArgs } : {}) },
        async (work) => work(raw.p11, raw.session),
      );
      expect(view).toEqual({ shared: expected });
      // What is on the token now, as a process that starts now sees it.
      raw.reopen();
      expect(probeObjects(raw)).toBe(0);
    }, 120_000);
  });
}
