/**
 * What a client sent, made fit for a log or audit line: control characters (C0, DEL, C1, and the Unicode line and
 * paragraph separators) removed, then cut to `max` characters with the number of characters left out. A 16 KB
 * `Action` from an unauthenticated client must cost a line of ordinary size, and no client text may forge a line
 * break or a terminal escape in a log viewer.
 */
const CLIENT_TEXT_MAX = 128;

const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g;

export function clientText(value: string, max = CLIENT_TEXT_MAX): string {
  const clean = value.replace(CONTROL, '');
  if (clean.length <= max) return clean;
  // Never cut a surrogate pair in half (that would leave invalid UTF-16, which JSON writes as an escape).
  let end = max;
  const last = clean.charCodeAt(end - 1);
  if (last >= 0xd800 && last <= 0xdbff) end -= 1;
  return `${clean.slice(0, end)}…[+${clean.length - end}]`;
}
