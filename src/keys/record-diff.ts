/**
 * A short account of what one change did to a registry record, field by field (`registry history`): `state Enabled →
 * Disabled`, `aliases +alias/a -alias/b`, `versions +<id>`. Secret material is never shown: fields that could hold it
 * are left out, whatever the record says (PostgreSQL's history keeps access keys without their secrets anyway).
 */
const NEVER_SHOWN = new Set(['secrets', 'sealedSecrets', 'secret']);
const MAX_VALUE = 48;

type Fields = Record<string, unknown>;

const asFields = (record: unknown): Fields => (record !== null && typeof record === 'object' && !Array.isArray(record) ? (record as Fields) : {});

function short(value: unknown): string {
  if (value === undefined || value === null) return '-';
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  return text.length > MAX_VALUE ? `${text.slice(0, MAX_VALUE - 1)}…` : text;
}

/** Array items by identity: key versions by keyVersionId, everything else by its JSON. */
function itemId(item: unknown): string {
  const fields = asFields(item);
  return typeof fields.keyVersionId === 'string' ? fields.keyVersionId : typeof item === 'string' ? item : JSON.stringify(item);
}

function arrayChange(name: string, before: unknown[], after: unknown[]): string | undefined {
  const was = new Map(before.map((i) => [itemId(i), JSON.stringify(i)]));
  const now = new Map(after.map((i) => [itemId(i), JSON.stringify(i)]));
  const parts = [
    ...[...now.keys()].filter((id) => !was.has(id)).map((id) => `+${short(id)}`),
    ...[...was.keys()].filter((id) => !now.has(id)).map((id) => `-${short(id)}`),
    ...[...now.keys()].filter((id) => was.has(id) && was.get(id) !== now.get(id)).map((id) => `~${short(id)}`),
  ];
  if (parts.length > 0) return `${name} ${parts.join(' ')}`;
  return JSON.stringify(before) === JSON.stringify(after) ? undefined : `${name} reordered`;
}

/** The fields this change set, changed or removed; `created` / `removed` for a whole record. */
export function recordDiff(before: unknown, after: unknown): string[] {
  const old = asFields(before);
  const now = asFields(after);
  const changes: string[] = [];
  if (before === null || before === undefined) changes.push('created');
  if (after === null || after === undefined) return [...changes, 'removed'];
  const names = [...new Set([...Object.keys(old), ...Object.keys(now)])].filter((n) => !NEVER_SHOWN.has(n)).sort();
  for (const name of names) {
    const [a, b] = [old[name], now[name]];
    if (JSON.stringify(a) === JSON.stringify(b)) continue;
    if (Array.isArray(a) || Array.isArray(b)) {
      const change = arrayChange(name, Array.isArray(a) ? a : [], Array.isArray(b) ? b : []);
      if (change) changes.push(change);
    } else changes.push(`${name} ${short(a)} → ${short(b)}`);
  }
  return changes;
}
