/**
 * audit-verify: checks audit trail files written by `AuditTrail` (src/observability/audit-trail.ts).
 *
 *   node dist/cli/audit-verify.js <file> [<file> …]
 *
 * Several files are taken in rotation order (oldest first, the current file last): each file's line 1 must chain
 * (`prev`) to the previous file's last hash. Prints one line per file:
 *
 *   OK <file>: N lines, last hash <hex>[, starts from <hex> (the last hash of <previous file>, not given: …)]
 *   GAP <file> line N: M records could not be written (<errno>); those requests were answered 503
 *   ALTERED <file> line N: <reason>
 *   ERROR <file>: cannot read (<error>)
 *
 * The first file given may start from a file that is not given (older files deleted by retention): its line 1 is a
 * rotation record, and its `prev` — the anchor to compare with a copy kept elsewhere — is printed. A GAP is a chain
 * intact but records missing, noted by the trail itself when it could write again; it does not change the exit status.
 *
 * Exit status: 0 every file verified, 1 at least one file altered, 2 usage error or a file that cannot be read.
 * After a failed file the next one is still checked on its own, without the link to its predecessor.
 */
import { verifyAuditFile } from '../observability/audit-chain.js';
import { executedDirectly } from './run-as-script.js';

export const USAGE = 'usage: audit-verify <file> [<file> …]   (several files: oldest first, in rotation order)';

export function runAuditVerify(args: string[], out: (s: string) => void): number {
  const files: string[] = [];
  let optionsEnded = false;
  for (const arg of args) {
    if (!optionsEnded && arg === '--') optionsEnded = true;
    else if (!optionsEnded && (arg === '-h' || arg === '--help')) {
      out(USAGE);
      return 0;
    } else if (!optionsEnded && arg.startsWith('-') && arg !== '-') {
      out(`audit-verify: unknown option ${arg}`);
      out(USAGE);
      return 2;
    } else files.push(arg);
  }
  if (files.length === 0) {
    out(USAGE);
    return 2;
  }

  let altered = false;
  let unreadable = false;
  let previous: { file: string; lastHash: string } | undefined;
  for (const file of files) {
    let result;
    try {
      result = verifyAuditFile(file, previous ? { expectedPrev: previous.lastHash } : {});
    } catch (err) {
      out(`ERROR ${file}: cannot read (${err instanceof Error ? err.message : String(err)})`);
      unreadable = true;
      previous = undefined;
      continue;
    }
    if (result.ok) {
      const { anchor } = result;
      const from = anchor
        ? `, starts from ${anchor.prev} (the last hash of ${anchor.previousFile ?? 'an earlier file'}, not given: deleted by retention or kept elsewhere)`
        : '';
      out(`OK ${file}: ${result.lines} lines, last hash ${result.lastHash}${from}`);
      for (const gap of result.gaps) {
        out(`GAP ${file} line ${gap.line}: ${gap.lost} records could not be written (${gap.error ?? 'unknown'}); those requests were answered 503`);
      }
      previous = { file, lastHash: result.lastHash };
    } else {
      out(`ALTERED ${file} ${result.reason}`);
      altered = true;
      previous = undefined;
    }
  }
  return altered ? 1 : unreadable ? 2 : 0;
}


if (executedDirectly(import.meta.url)) {
  process.exitCode = runAuditVerify(process.argv.slice(2), (s) => process.stdout.write(`${s}\n`));
}
