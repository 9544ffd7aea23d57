import { appendFileSync, existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NonceJournal } from '../../src/http/auth/nonce-journal.js';
import { nonceId } from '../../src/http/auth/replay-guard.js';

const TTL = 30 * 60 * 1000;
let dir: string;
let file: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'nonce-journal-'));
  file = join(dir, 'replay', 'nonces.journal');
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('NonceJournal', () => {
  it('when records were appended and the process never closed the journal (kill -9), then reopening returns every live one exactly', async () => {
    let now = 1_700_000_000_000;
    const { journal, remembered } = await NonceJournal.open(file, TTL, () => now);
    expect(remembered).toEqual([]);
    const written = [
      { account: 'default', id: nonceId('LTAIabc', 'n1'), expiresAtMs: now + 900_000 },
      { account: '账户-ü', id: 2 ** 53 - 1, expiresAtMs: now + 1000 },
      { account: 'x'.repeat(300), id: 0, expiresAtMs: now + TTL },
    ];
    await Promise.all(written.map((n) => journal.append(n))); // resolved: handed to the OS; no close()
    now += 1;
    const reopened = await NonceJournal.open(file, TTL, () => now);
    expect(reopened.remembered).toEqual(written);
    await reopened.journal.close();
    await journal.close();
  });

  it('when many records arrive at once, then they go out in a few writes and all of them are kept', async () => {
    const now = 1_700_000_000_000;
    const { journal } = await NonceJournal.open(file, TTL, () => now);
    await Promise.all(Array.from({ length: 5000 }, (_, i) => journal.append({ account: 'a', id: i, expiresAtMs: now + 60_000 })));
    await journal.close();
    const reopened = await NonceJournal.open(file, TTL, () => now);
    expect(reopened.remembered.map((n) => n.id)).toEqual(Array.from({ length: 5000 }, (_, i) => i));
    await reopened.journal.close();
  });

  it('when records have expired, then reopening leaves them out', async () => {
    let now = 1_700_000_000_000;
    const { journal } = await NonceJournal.open(file, TTL, () => now);
    await journal.append({ account: 'a', id: 1, expiresAtMs: now + 1000 });
    await journal.append({ account: 'a', id: 2, expiresAtMs: now + 60_000 });
    await journal.close();
    now += 5000;
    const reopened = await NonceJournal.open(file, TTL, () => now);
    expect(reopened.remembered.map((n) => n.id)).toEqual([2]);
    await reopened.journal.close();
  });

  it('when a segment is older than the TTL, then it becomes .previous, the one before is dropped, and the files stay bounded', async () => {
    let now = 1_700_000_000_000;
    const { journal } = await NonceJournal.open(file, TTL, () => now);
    await journal.append({ account: 'a', id: 1, expiresAtMs: now + TTL });
    now += TTL; // the next append starts a new segment
    await journal.append({ account: 'a', id: 2, expiresAtMs: now + TTL + 1000 });
    expect(existsSync(`${file}.previous`)).toBe(true);
    now += TTL; // id 1 expired; its segment is replaced
    await journal.append({ account: 'a', id: 3, expiresAtMs: now + TTL });
    await journal.close();
    const sizes = statSync(file).size + statSync(`${file}.previous`).size;
    expect(sizes).toBeLessThan(2 * (8 + 2 + 1 + 11) + 1); // two headers + one record each
    const reopened = await NonceJournal.open(file, TTL, () => now);
    expect(reopened.remembered.map((n) => n.id)).toEqual([2, 3]);
    await reopened.journal.close();
  });

  it('when the last record was cut short, then the ones before it are read and the stump is ignored', async () => {
    const now = 1_700_000_000_000;
    const { journal } = await NonceJournal.open(file, TTL, () => now);
    await journal.append({ account: 'a', id: 1, expiresAtMs: now + 60_000 });
    await journal.close();
    appendFileSync(file, Buffer.from([0, 1, 0x61, 0, 0]));
    const reopened = await NonceJournal.open(file, TTL, () => now);
    expect(reopened.remembered.map((n) => n.id)).toEqual([1]);
    await reopened.journal.close();
  });
});
