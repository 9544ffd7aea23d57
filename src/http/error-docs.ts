import { ERROR_CATALOG, errorAnchor, type ErrorCode } from './error-catalog.js';

/**
 * docs/errors.md and the README's error table, written from the error catalog (`npm run docs:errors` writes them;
 * test/unit/error-docs.test.ts fails when the committed files differ). Each code's heading is the code itself, so its
 * anchor is errorAnchor(code): the fragment of every error body's `Recommend` link.
 */

const CODES = Object.keys(ERROR_CATALOG) as ErrorCode[];

const CLOUD: Record<(typeof ERROR_CATALOG)[ErrorCode]['cloud'], { short: string; long: string }> = {
  verbatim: { short: 'same code, status and message', long: 'the cloud answers the same code and status with this message, word for word' },
  code: { short: 'same code and status', long: 'the cloud answers the same code and status; its message text is not documented, so the message is the gateway’s own' },
  gateway: { short: 'not in the cloud’s table', long: 'not in the cloud’s error table: the gateway’s own code, named in the cloud’s style' },
};

const byStatus = (): ErrorCode[] => [...CODES].sort((a, b) => ERROR_CATALOG[a].status - ERROR_CATALOG[b].status);

/** A markdown table cell: no line break, no column bar. */
const cell = (text: string): string => text.replace(/\|/g, '\\|').replace(/\n/g, ' ');

function entry(code: ErrorCode): string {
  const e = ERROR_CATALOG[code];
  const message = e.cloud === 'verbatim' ? `Message (the cloud’s): \`${e.message}\`` : `Message: \`${e.message}\`, or a more precise one (which parameter, which key)`;
  const suffix = code === 'SignatureDoesNotMatch' ? ', followed by ` server string to sign is:<the string the gateway signed>`' : '';
  return [`### ${code}`, '', `HTTP ${e.status} · cloud: ${CLOUD[e.cloud].long}.`, '', `${message}${suffix}.`, '', `**What it means.** ${e.meaning}`, '', `**What to do.** ${e.action}`, ''].join('\n');
}

/** The whole of docs/errors.md. */
export function errorsMarkdown(): string {
  const gatewayOnly = byStatus().filter((c) => ERROR_CATALOG[c].cloud === 'gateway');
  return [
    '# Errors',
    '',
    '<!-- Generated from src/http/error-catalog.ts by `npm run docs:errors`: edit the catalog, not this file. -->',
    '',
    'Every refused request gets the Alibaba Cloud error body with the matching HTTP status: `RequestId` (also in the',
    '`x-acs-request-id` header), `HostId`, `Code`, `Message` and `Recommend`, a link to this page at the code’s entry',
    '(`errors.recommendBaseUrl` in the configuration, `docs/errors.md` by default, then `#` and the code in lower case',
    'without dots). JSON by default; with `Format=XML` the same fields under an `Error` root. Characters XML cannot carry',
    '(control characters a client sent, echoed in a message) are written as `\\uXXXX` text in XML bodies.',
    '',
    '```json',
    '{"RequestId":"5f0c…","HostId":"127.0.0.1:8443","Code":"Forbidden.AliasNotFound","Message":"The specified Alias is not found: alias/nope","Recommend":"docs/errors.md#forbiddenaliasnotfound"}',
    '```',
    '',
    '```xml',
    '<?xml version="1.0" encoding="UTF-8"?><Error><RequestId>5f0c…</RequestId><HostId>127.0.0.1:8443</HostId><Code>Forbidden.AliasNotFound</Code><Message>The specified Alias is not found: alias/nope</Message><Recommend>docs/errors.md#forbiddenaliasnotfound</Recommend></Error>',
    '```',
    '',
    'The "cloud" column compares each code with what Alibaba Cloud answers (its KMS error table and the error bodies of its',
    'API gateway): the SDKs and callers’ retry logic key on the code and the status, so those are the cloud’s wherever the',
    `cloud has the code. Codes that are not in the cloud’s error table (the gateway’s own): ${gatewayOnly.map((c) => `\`${c}\``).join(', ')}.`,
    '',
    '| status | code | cloud |',
    '|---|---|---|',
    ...byStatus().map((c) => `| ${ERROR_CATALOG[c].status} | [\`${c}\`](#${errorAnchor(c)}) | ${CLOUD[ERROR_CATALOG[c].cloud].short} |`),
    '',
    '## The codes',
    '',
    ...byStatus().map(entry),
  ].join('\n');
}

const README_BEGIN = '<!-- errors:begin (generated from src/http/error-catalog.ts by npm run docs:errors) -->';
const README_END = '<!-- errors:end -->';

/** The README's error table: one line per code, linked to its entry in docs/errors.md. */
function readmeTable(): string {
  return [
    '| status | code | when | cloud |',
    '|---|---|---|---|',
    ...byStatus().map((c) => {
      const e = ERROR_CATALOG[c];
      return `| ${e.status} | [\`${c}\`](docs/errors.md#${errorAnchor(c)}) | ${cell(e.meaning)} | ${CLOUD[e.cloud].short} |`;
    }),
  ].join('\n');
}

/** The README with its error table section written anew (the text between the markers). */
export function readmeWithErrorTable(readme: string): string {
  const from = readme.indexOf(README_BEGIN);
  const to = readme.indexOf(README_END);
  if (from < 0 || to < from) throw new Error(`README.md has no ${README_BEGIN} … ${README_END} section`);
  return `${readme.slice(0, from + README_BEGIN.length)}\n${readmeTable()}\n${readme.slice(to)}`;
}
