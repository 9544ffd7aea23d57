import { execFile, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { builtinModules } from 'node:module';
import { tmpdir } from 'node:os';
import { basename, dirname, join, posix, relative, resolve } from 'node:path';
import ts from 'typescript';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import type { Config, SecretRef } from '../../src/config/schema.js';
import { SM2_TOKEN_MODULE } from '../../src/demo/sm2-demo.js';
import { ASYNC_PKCS11_ADDON } from '../../src/hsm/async-pkcs11.js';

// The deployment files in deploy/: the systemd unit (systemd-analyze verify + the offline security review), the
// container file (statically: no container engine runs on the development machines), and every Kubernetes manifest
// (the schemas of the kubernetes-models package, unknown fields refused as the API server's strict field validation
// does, and the cross-references that make the pieces fit together). No cluster and no network are needed.

const root = resolve(import.meta.dirname, '../..');
const DEPLOY = join(root, 'deploy');
const SYSTEMD = join(DEPLOY, 'systemd');
const UNIT_FILE = join(SYSTEMD, 'hsm-gateway.service');
const CONTAINERFILE = join(DEPLOY, 'container/Containerfile');
const K8S = join(DEPLOY, 'kubernetes');

let work: string;
beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'hsm-gateway-deploy-manifests-'));
});
afterAll(() => {
  rmSync(work, { recursive: true, force: true });
});

function run(command: string, args: string[], debianPackage: string): { status: number | null; output: string } {
  const r = spawnSync(command, args, { cwd: root, encoding: 'utf8', timeout: 60_000 });
  if ((r.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') {
    throw new Error(
      `${command} is not installed. It comes with the Debian package \`${debianPackage}\`: \`npm test\` installs it ` +
        `(scripts/setup.sh test, as root), or run \`sudo apt-get install ${debianPackage}\`.`,
    );
  }
  if (r.error) throw r.error;
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

const hasCommand = (command: string): boolean => spawnSync('sh', ['-c', `command -v ${command}`]).status === 0;

/** A file's text without its comment lines, for "is this directive / instruction present" checks. */
const activeLines = (text: string, comment = /^\s*[#;]/): string[] => text.split('\n').filter((l) => l.trim() !== '' && !comment.test(l));

// ---------------------------------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------------------------------

/** The unit's directives: section → key → every value assigned (in order; an empty assignment is ''). */
function parseUnit(text: string): Map<string, Map<string, string[]>> {
  const sections = new Map<string, Map<string, string[]>>();
  let current: Map<string, string[]> | undefined;
  for (const line of activeLines(text)) {
    const section = /^\[(.+)\]$/.exec(line.trim());
    if (section) {
      current = new Map();
      sections.set(section[1]!, current);
      continue;
    }
    const eq = line.indexOf('=');
    if (!current || eq < 0) throw new Error(`unexpected unit line: ${line}`);
    const key = line.slice(0, eq).trim();
    current.set(key, [...(current.get(key) ?? []), line.slice(eq + 1).trim()]);
  }
  return sections;
}

const unitText = (): string => readFileSync(UNIT_FILE, 'utf8');
const service = (): Map<string, string[]> => parseUnit(unitText()).get('Service')!;
const one = (s: Map<string, string[]>, key: string): string | undefined => s.get(key)?.at(-1);

/**
 * The unit as it would be installed on this machine: `systemd-analyze verify` checks that ExecStart's program
 * exists, so the install paths are pointed at this checkout and this Node. Written under the unit's own name.
 */
function localUnit(text: string, name = 'hsm-gateway.service'): string {
  const dir = mkdtempSync(join(work, 'unit-'));
  const file = join(dir, name);
  writeFileSync(file, text.replaceAll('/usr/bin/node', process.execPath).replaceAll('/opt/hsm-gateway', root));
  return file;
}

/**
 * `systemd-analyze verify`: exit status 0 AND no message about the unit. It exits 0 on unknown directives and bad
 * values (it only warns, and systemd then ignores that line): for a hardening directive, a silent loss.
 */
function verifyUnit(text: string): { status: number | null; problems: string[]; output: string } {
  const file = localUnit(text);
  const r = run('systemd-analyze', ['verify', '--man=no', '--generators=no', '--recursive-errors=no', file], 'systemd');
  const problems = r.output.split('\n').filter((l) => l.includes('hsm-gateway.service'));
  return { status: r.status, problems, output: r.output };
}

function securityReview(text: string): { status: number | null; exposure: number; output: string } {
  const file = localUnit(text);
  // --threshold=20: exit non-zero when the overall exposure is above 2.0 (on systemd's 0–10 scale).
  const r = run('systemd-analyze', ['security', '--offline=yes', '--threshold=20', '--no-pager', file], 'systemd');
  const level = /Overall exposure level for hsm-gateway\.service: ([\d.]+)/.exec(r.output)?.[1];
  if (level === undefined) throw new Error(`no exposure level in:\n${r.output}`);
  return { status: r.status, exposure: Number(level), output: r.output };
}

describe('deploy/systemd/hsm-gateway.service', () => {
  it('when systemd-analyze verifies the unit, then it exits 0 and says nothing about it', () => {
    const r = verifyUnit(unitText());
    expect(r.problems, r.output).toEqual([]);
    expect(r.status, r.output).toBe(0);
  });

  it('when a directive is misspelt or a value is wrong, then the verification reports it (the check can fail)', () => {
    const typo = verifyUnit(unitText().replace(/^NoNewPrivileges=yes$/m, 'NoNewPrivilege=yes'));
    expect(typo.problems.join('\n')).toMatch(/Unknown key .*NoNewPrivilege/);
    const badValue = verifyUnit(unitText().replace(/^ProtectSystem=strict$/m, 'ProtectSystem=very-strict'));
    expect(badValue.problems.join('\n')).toMatch(/protect system value/i);
    const missingProgram = verifyUnit(unitText().replace(/^ExecStart=\/usr\/bin\/node /m, 'ExecStart=/usr/bin/no-such-node '));
    expect(missingProgram.status).not.toBe(0);
  });

  it("when systemd's offline security review reads the unit, then the exposure is at most 2.0 (OK), and without the sandbox it is not", () => {
    const r = securityReview(unitText());
    expect(r.exposure, r.output).toBeLessThanOrEqual(2.0);
    expect(r.status, r.output).toBe(0);
    // The same unit without its sandboxing block: the review fails the threshold.
    const bare = unitText().replace(/^# Sandboxing[\s\S]*?(?=^\[Install\])/m, '');
    expect(bare).not.toContain('ProtectSystem=');
    const weak = securityReview(bare);
    expect(weak.exposure).toBeGreaterThan(2.0);
    expect(weak.status).not.toBe(0);
  });

  it('when the hardening directives are read, then each is set as the deployment notes require', () => {
    const s = service();
    expect(one(s, 'User')).toBe('hsm-gateway');
    expect(one(s, 'Group')).toBe('hsm-gateway');
    expect(s.has('DynamicUser')).toBe(false);
    for (const [key, value] of Object.entries({
      NoNewPrivileges: 'yes',
      ProtectSystem: 'strict',
      ProtectHome: 'yes',
      PrivateTmp: 'yes',
      PrivateDevices: 'yes',
      ProtectKernelTunables: 'yes',
      ProtectKernelModules: 'yes',
      ProtectControlGroups: 'yes',
      RestrictNamespaces: 'yes',
      RestrictSUIDSGID: 'yes',
      LockPersonality: 'yes',
      SystemCallArchitectures: 'native',
      UMask: '0077',
    })) {
      expect(one(s, key), key).toBe(value);
    }
    expect(s.get('CapabilityBoundingSet')).toEqual(['']);
    expect(s.get('AmbientCapabilities')).toEqual(['']);
    expect(one(s, 'RestrictAddressFamilies')?.split(/\s+/).sort()).toEqual(['AF_INET', 'AF_INET6', 'AF_UNIX']);
    expect(s.get('SystemCallFilter')).toContain('@system-service');
    // V8's JIT needs writable-then-executable pages: MemoryDenyWriteExecute=yes would stop Node.
    expect(s.has('MemoryDenyWriteExecute')).toBe(false);
    expect(one(s, 'StateDirectory')).toBe('hsm-gateway');
  });

  it('when the start, reload and stop settings are read, then they match the gateway (entry point, SIGHUP reload, SIGTERM drain)', () => {
    const s = service();
    expect(one(s, 'ExecStart')).toBe('/usr/bin/node --max-semi-space-size=8 /opt/hsm-gateway/bin/hsm-gateway.cjs');
    expect(existsSync(join(root, 'bin/hsm-gateway.cjs'))).toBe(true);
    expect(one(s, 'ExecReload')).toBe('/bin/kill -HUP $MAINPID');
    expect(one(s, 'KillSignal') ?? 'SIGTERM').toBe('SIGTERM');
    expect(s.get('Environment')).toContain('HSM_GATEWAY_CONFIG=/etc/hsm-gateway/gateway.yaml');
    const config = loadConfig(join(SYSTEMD, 'gateway.example.yaml'), {});
    expect(Number(one(s, 'TimeoutStopSec'))).toBeGreaterThan(config.server.shutdownTimeoutMs / 1000 + 5);
    // Restarting on a wrong PIN is one more login attempt each time: the start rate is bounded.
    const unit = parseUnit(unitText()).get('Unit')!;
    expect(Number(one(unit, 'StartLimitBurst'))).toBeLessThanOrEqual(3);
    expect(Number(one(unit, 'StartLimitIntervalSec'))).toBeGreaterThanOrEqual(300);
  });

  it('when gateway.example.yaml is loaded by the gateway, then it is valid and its PIN is the unit\'s LoadCredential', () => {
    const s = service();
    const credentials = new Map((s.get('LoadCredential') ?? []).map((c) => c.split(':') as [string, string]));
    expect(credentials.get('user-pin')).toBe('/etc/hsm-gateway/secrets/user-pin');
    const config = loadConfig(join(SYSTEMD, 'gateway.example.yaml'), {});
    // systemd puts the credentials of a system service in /run/credentials/<unit name>/<id>.
    expect(config.hsm.pin).toEqual({ file: '/run/credentials/hsm-gateway.service/user-pin' });
    // Access-key secrets are plain files (a credential would not change on `systemctl reload`).
    for (const key of config.auth.accessKeys) {
      expect('file' in key.secret && key.secret.file.startsWith('/etc/hsm-gateway/access-keys/'), key.accessKeyId).toBe(true);
    }
    // The only writable place under ProtectSystem=strict is the StateDirectory: the audit file and the token live there.
    expect(config.audit.file?.startsWith('/var/lib/hsm-gateway/')).toBe(true);
    expect(config.hsm.softhsmConf).toBe('/etc/hsm-gateway/softhsm2.conf');
    const softhsm = readFileSync(join(SYSTEMD, 'softhsm2.conf'), 'utf8');
    expect(softhsm).toMatch(/^directories\.tokendir = \/var\/lib\/hsm-gateway\//m);
  });

  it('when the PostgreSQL drop-in is added to the unit, then systemd-analyze verifies it silently, and gateway.postgres.example.yaml names its credential and is the example config but for the registry', () => {
    const dropIn = readFileSync(join(SYSTEMD, 'postgres.conf'), 'utf8');
    // A drop-in's [Service] lines join the unit's [Service] section: verified as one file with a second [Service].
    const r = verifyUnit(`${unitText()}\n${dropIn}`);
    expect(r.problems, r.output).toEqual([]);
    expect(r.status, r.output).toBe(0);
    const added = parseUnit(dropIn);
    expect([...added.keys()]).toEqual(['Service']);
    expect([...added.get('Service')!.keys()]).toEqual(['LoadCredential']);
    const credentials = new Map(added.get('Service')!.get('LoadCredential')!.map((c) => c.split(':') as [string, string]));
    expect(credentials.get('pg-password')).toBe('/etc/hsm-gateway/secrets/pg-password');
    const pg = loadConfig(join(SYSTEMD, 'gateway.postgres.example.yaml'), {});
    expect(pg.registry.store).toBe('postgres');
    expect(pg.registry.postgres?.password).toEqual({ file: '/run/credentials/hsm-gateway.service/pg-password' });
    const { registry: _pgRegistry, ...rest } = pg;
    const { registry: _tokenRegistry, ...base } = loadConfig(join(SYSTEMD, 'gateway.example.yaml'), {});
    expect(rest).toEqual(base);
  });

  it('when systemd-sysusers applies hsm-gateway.sysusers to an empty root, then it creates the unit\'s user without a login shell', () => {
    const target = mkdtempSync(join(work, 'sysusers-'));
    mkdirSync(join(target, 'etc/sysusers.d'), { recursive: true });
    writeFileSync(join(target, 'etc/sysusers.d/hsm-gateway.conf'), readFileSync(join(SYSTEMD, 'hsm-gateway.sysusers')));
    const r = run('systemd-sysusers', [`--root=${target}`], 'systemd');
    expect(r.status, r.output).toBe(0);
    const passwd = readFileSync(join(target, 'etc/passwd'), 'utf8').trim().split(':');
    expect(passwd[0]).toBe(one(service(), 'User'));
    expect(passwd[5]).toBe('/var/lib/hsm-gateway');
    expect(passwd[6]).toMatch(/nologin$/);
    expect(readFileSync(join(target, 'etc/group'), 'utf8')).toMatch(new RegExp(`^${one(service(), 'Group')}:`, 'm'));
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Container file
// ---------------------------------------------------------------------------------------------------------------

interface Instruction {
  op: string;
  args: string;
}

/** Containerfile instructions: comments dropped, continuation lines joined. */
function parseContainerfile(text: string): Instruction[] {
  const joined = text
    .split('\n')
    .filter((l) => !/^\s*#/.test(l))
    .join('\n')
    .replace(/\\\n/g, ' ');
  return joined
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => {
      const m = /^\s*(\w+)\s+(.*)$/.exec(l);
      if (!m) throw new Error(`unexpected Containerfile line: ${l}`);
      return { op: m[1]!.toUpperCase(), args: m[2]!.trim() };
    });
}

interface Stage {
  name?: string;
  instructions: Instruction[];
}
function stages(instructions: Instruction[]): { args: Map<string, string>; stages: Stage[] } {
  const args = new Map<string, string>();
  const result: Stage[] = [];
  for (const i of instructions) {
    if (i.op === 'FROM') {
      const m = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(i.args)!;
      result.push({ name: m[2], instructions: [i] });
    } else if (result.length === 0) {
      if (i.op !== 'ARG') throw new Error(`${i.op} before the first FROM`);
      const [k, v] = i.args.split('=');
      args.set(k!, v ?? '');
    } else result.at(-1)!.instructions.push(i);
  }
  return { args, stages: result };
}

/** COPY's sources and destination (shell form; --from / --chown flags apart). */
function copyOf(i: Instruction): { from?: string; sources: string[]; dest: string } {
  const words = i.args.split(/\s+/);
  const flags = words.filter((w) => w.startsWith('--'));
  const paths = words.filter((w) => !w.startsWith('--'));
  return { from: flags.find((f) => f.startsWith('--from='))?.slice('--from='.length), sources: paths.slice(0, -1), dest: paths.at(-1)! };
}

/** ENV in both forms: `ENV A=1 B=2` (quotes allowed) and the legacy `ENV A 1`. */
function envOf(i: Instruction): Record<string, string> {
  const pairs = [...i.args.matchAll(/(\w+)=("[^"]*"|\S+)/g)];
  if (pairs.length > 0) return Object.fromEntries(pairs.map((m) => [m[1]!, m[2]!.replace(/^"|"$/g, '')]));
  const [k, ...v] = i.args.split(/\s+/);
  return { [k!]: v.join(' ') };
}

/** .dockerignore patterns as regular expressions (`*` within a path segment; a folder excludes what is under it). */
function ignoredBy(patterns: string[]): (path: string) => boolean {
  const res = patterns.map((p) => new RegExp(`^${p.replace(/\/$/, '').replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*')}(/.*)?$`));
  return (path) => res.some((re) => re.test(path) || re.test(basename(path)));
}

const containerfile = (): ReturnType<typeof stages> => stages(parseContainerfile(readFileSync(CONTAINERFILE, 'utf8')));
const runtimeStage = (): Stage => containerfile().stages.at(-1)!;
const buildStage = (): Stage => containerfile().stages.find((s) => s.name === 'build')!;
const ops = (stage: Stage, op: string): Instruction[] => stage.instructions.filter((i) => i.op === op);
const runtimeEnv = (): Record<string, string> => Object.assign({}, ...ops(runtimeStage(), 'ENV').map(envOf));
/** The exec form of HEALTHCHECK … CMD [...] / CMD [...]. */
const execForm = (args: string): string[] => JSON.parse(args.slice(args.indexOf('['))) as string[];

describe('deploy/container/Containerfile (static checks: no container engine runs here)', () => {
  it('when the stages are read, then both start from node:20-bookworm-slim (Debian 12) and the runtime stage runs as a non-root user', () => {
    const { args, stages: all } = containerfile();
    expect(args.get('NODE_IMAGE')).toBe('node:20-bookworm-slim');
    expect(all.map((s) => s.instructions[0]!.args.split(/\s+/)[0])).toEqual(['${NODE_IMAGE}', '${NODE_IMAGE}']);
    expect(all.map((s) => s.name)).toEqual(['build', undefined]);
    const user = ops(runtimeStage(), 'USER').at(-1)!.args;
    expect(user).toMatch(/^\d+:\d+$/);
    expect(Number(user.split(':')[0])).toBeGreaterThan(0);
    const apt = ops(runtimeStage(), 'RUN').map((r) => r.args).join('\n');
    for (const pkg of ['softhsm2', 'opensc']) expect(apt).toMatch(new RegExp(`apt-get install [^&]*\\b${pkg}\\b`));
    expect(apt).toMatch(/useradd [^&]*--uid 10001/);
  });

  it('when the COPY sources from the build context are looked up, then each exists and none is excluded by .dockerignore', () => {
    const ignored = ignoredBy(activeLines(readFileSync(join(root, '.dockerignore'), 'utf8')));
    const sources = ops(buildStage(), 'COPY').flatMap((i) => copyOf(i).sources);
    expect(sources.length).toBeGreaterThan(4);
    for (const source of sources) {
      expect(existsSync(join(root, source)), `${source} is not in the repository`).toBe(true);
      expect(ignored(source), `${source} is excluded by .dockerignore`).toBe(false);
    }
    // What must never be sent to the builder: the demo's secrets, local builds, dependencies.
    for (const path of ['.data/secrets/user-pin', 'node_modules/x', 'dist/main.js', '.git/config', 'softhsm/sm2-token/build/libsm2token.so']) {
      expect(ignored(path), path).toBe(true);
    }
  });

  it('when the runtime stage copies from the build stage, then every file the gateway reads at run time is there', () => {
    const build = buildStage();
    const workdir = ops(build, 'WORKDIR').at(-1)!.args;
    const copied = ops(runtimeStage(), 'COPY')
      .map(copyOf)
      .filter((c) => c.from === 'build')
      .flatMap((c) => c.sources.map((s) => posix.relative(workdir, s)));
    // Produced in the build stage: tsc's outDir, npm's node_modules, the SM2 test token's build output.
    expect((JSON.parse(readFileSync(join(root, 'tsconfig.json'), 'utf8')) as { compilerOptions: { outDir: string } }).compilerOptions.outDir).toBe('dist');
    expect(readFileSync(join(root, 'scripts/build-sm2-token.sh'), 'utf8')).toMatch(/^src=softhsm\/sm2-token\nout=\$src\/build$/m);
    const sm2Module = relative(root, SM2_TOKEN_MODULE);
    expect(sm2Module).toBe('softhsm/sm2-token/build/libsm2token.so');
    // Read by dist/demo/bootstrap.js at ../../softhsm/softhsm2.conf.template.
    expect(readFileSync(join(root, 'src/demo/bootstrap.ts'), 'utf8')).toContain("'../../softhsm/softhsm2.conf.template'");
    // Loaded by dist/hsm/async-pkcs11.js: the request path's PKCS#11 calls.
    const asyncAddon = relative(root, ASYNC_PKCS11_ADDON);
    expect(asyncAddon).toBe('native/async-pkcs11/build/async_pkcs11.node');
    expect(copied.sort()).toEqual(['bin', 'dist', 'node_modules', 'package.json', sm2Module, asyncAddon, 'softhsm/softhsm2.conf.template'].sort());
    const buildRuns = ops(build, 'RUN').map((r) => r.args).join('\n');
    expect(buildRuns).toContain('npm ci');
    expect(buildRuns).toContain('tsc -p tsconfig.json');
    expect(buildRuns).toContain('scripts/build-sm2-token.sh');
    expect(buildRuns).toContain('scripts/build-async-pkcs11.sh');
    expect(buildRuns).toContain('npm prune --omit=dev');
  });

  it('when dist/ is scanned for imports, then every package it loads is a runtime dependency (the image prunes dev dependencies)', () => {
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
    const files = (dir: string): string[] =>
      readdirSync(dir).flatMap((f) => (statSync(join(dir, f)).isDirectory() ? files(join(dir, f)) : f.endsWith('.js') ? [join(dir, f)] : []));
    const dist = files(join(root, 'dist'));
    expect(dist.length, 'dist/ is built by scripts/setup.sh').toBeGreaterThan(10);
    const used = new Set<string>();
    for (const file of dist) {
      // TypeScript's scanner: static and dynamic imports and require() calls, not look-alikes inside strings.
      for (const { fileName: spec } of ts.preProcessFile(readFileSync(file, 'utf8'), true, true).importedFiles) {
        if (spec.startsWith('.') || spec.startsWith('node:') || builtinModules.includes(spec)) continue;
        used.add(spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!);
      }
    }
    expect(used.size).toBeGreaterThan(3);
    for (const name of used) expect(Object.keys(pkg.dependencies), `dist/ imports ${name}`).toContain(name);
  });

  it('when the runtime settings are read, then the gateway listens on 0.0.0.0:8443, keeps the demo in a volume and starts from bin/', () => {
    const stage = runtimeStage();
    const env = runtimeEnv();
    expect(env.HSM_GATEWAY_HOST).toBe('0.0.0.0');
    expect(env.HSM_GATEWAY_PORT).toBe('8443');
    expect(ops(stage, 'EXPOSE').map((i) => i.args)).toEqual([env.HSM_GATEWAY_PORT]);
    expect(ops(stage, 'VOLUME').map((i) => JSON.parse(i.args) as string[]).flat()).toContain(env.HSM_GATEWAY_HOME);
    expect(env.HSM_GATEWAY_CONFIG, 'the image runs the demo unless a config is given').toBeUndefined();
    expect(execForm(ops(stage, 'CMD').at(-1)!.args)).toEqual(['node', '--max-semi-space-size=8', 'bin/hsm-gateway.cjs']);
    expect(ops(stage, 'STOPSIGNAL').map((i) => i.args)).toEqual(['SIGTERM']);
    const healthcheck = ops(stage, 'HEALTHCHECK').at(-1)!.args;
    expect(healthcheck).toContain('/healthz');
  });

  describe('HEALTHCHECK command, run against a stand-in for the gateway', () => {
    let server: Server;
    let status = 200;
    let port = 0;
    beforeAll(async () => {
      server = createServer((req, res) => {
        res.statusCode = req.url === '/healthz' ? status : 404;
        res.end();
      });
      await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
      port = (server.address() as { port: number }).port;
    });
    afterAll(() => new Promise<void>((ok) => server.close(() => ok())));

    const healthcheck = (env: NodeJS.ProcessEnv): Promise<number> => {
      const [command, ...args] = execForm(ops(runtimeStage(), 'HEALTHCHECK').at(-1)!.args.replace(/^.*?\bCMD\s+/, ''));
      expect(command).toBe('node');
      return new Promise((ok) => {
        execFile(process.execPath, args, { env: { PATH: process.env.PATH, ...env }, timeout: 10_000 }, (err) => ok(err ? Number(err.code ?? 1) : 0));
      });
    };

    it('when /healthz answers 200, then it exits 0; 503, then 1; nothing listening, then 1', async () => {
      status = 200;
      expect(await healthcheck({ HSM_GATEWAY_PORT: String(port) })).toBe(0);
      status = 503;
      expect(await healthcheck({ HSM_GATEWAY_PORT: String(port) })).toBe(1);
      const closed = createServer();
      await new Promise<void>((ok) => closed.listen(0, '127.0.0.1', ok));
      const unused = (closed.address() as { port: number }).port;
      await new Promise<void>((ok) => closed.close(() => ok()));
      expect(await healthcheck({ HSM_GATEWAY_PORT: String(unused) })).toBe(1);
    });
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------------------------------

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [field: string]: unknown;
}
interface Source {
  file: string;
  object: K8sObject;
}
interface Kustomization {
  apiVersion: string;
  kind: string;
  namespace?: string;
  resources: string[];
  configMapGenerator?: Array<{ name: string; files: string[] }>;
  [field: string]: unknown;
}

// Shapes of the parts of the manifests the cross-checks read.
type Labels = Record<string, string>;
interface Probe {
  httpGet?: { path: string; port: number | string };
  tcpSocket?: { port: number | string };
  periodSeconds?: number;
}
interface Container {
  name: string;
  image: string;
  command?: string[];
  env?: Array<{ name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string }; configMapKeyRef?: { name: string } } }>;
  envFrom?: Array<{ secretRef?: { name: string }; configMapRef?: { name: string } }>;
  ports?: Array<{ name?: string; containerPort: number }>;
  startupProbe?: Probe;
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  lifecycle?: { preStop?: { exec?: { command: string[] }; sleep?: { seconds: number } } };
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  securityContext?: {
    allowPrivilegeEscalation?: boolean;
    readOnlyRootFilesystem?: boolean;
    privileged?: boolean;
    runAsUser?: number;
    capabilities?: { drop?: string[]; add?: string[] };
  };
  volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean }>;
}
interface Volume {
  name: string;
  configMap?: { name: string };
  secret?: { secretName: string; defaultMode?: number };
  hostPath?: { path: string; type?: string };
  emptyDir?: object;
  [source: string]: unknown;
}
interface PodSpec {
  automountServiceAccountToken?: boolean;
  terminationGracePeriodSeconds?: number;
  securityContext?: { runAsNonRoot?: boolean; runAsUser?: number; fsGroup?: number; seccompProfile?: { type: string } };
  topologySpreadConstraints?: Array<{ topologyKey: string; whenUnsatisfiable: string; labelSelector: { matchLabels: Labels } }>;
  containers: Container[];
  initContainers?: Container[];
  volumes?: Volume[];
}
interface Deployment extends K8sObject {
  spec: {
    replicas: number;
    selector: { matchLabels: Labels };
    strategy?: { type: string; rollingUpdate?: { maxUnavailable?: number | string } };
    template: { metadata: { labels: Labels; annotations?: Record<string, string> }; spec: PodSpec };
  };
}
interface Service extends K8sObject {
  spec: { selector: Labels; ports: Array<{ name?: string; port: number; targetPort?: number | string }> };
}

const kustomization = (): Kustomization => parse(readFileSync(join(K8S, 'kustomization.yaml'), 'utf8'), { version: '1.1' }) as Kustomization;

/** YAML as kubectl reads it (YAML 1.1, like go-yaml). */
function documents(file: string): K8sObject[] {
  const docs = parseAllDocuments(readFileSync(join(K8S, file), 'utf8'), { version: '1.1' });
  for (const d of docs) if (d.errors.length > 0) throw new Error(`${file}: ${d.errors.map((e) => e.message).join('; ')}`);
  return docs.map((d) => d.toJS() as K8sObject | null).filter((o): o is K8sObject => o !== null);
}

/** The objects `kubectl apply -k deploy/kubernetes` creates: the resources and the generated ConfigMaps (no hash). */
function manifestObjects(): Source[] {
  const k = kustomization();
  const sources = k.resources.flatMap((file) => documents(file).map((object) => ({ file, object })));
  for (const g of k.configMapGenerator ?? []) {
    const data = Object.fromEntries(g.files.map((f) => [basename(f), readFileSync(join(K8S, f), 'utf8')]));
    sources.push({ file: 'kustomization.yaml', object: { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: g.name }, data } });
  }
  return sources.map((s) => ({ ...s, object: { ...s.object, metadata: { ...s.object.metadata, namespace: s.object.kind === 'Namespace' ? undefined : k.namespace } } }));
}

const find = <T extends K8sObject>(kind: string, name: string): T => {
  const o = manifestObjects().find((s) => s.object.kind === kind && s.object.metadata.name === name)?.object;
  if (!o) throw new Error(`no ${kind} ${name} in deploy/kubernetes`);
  return o as T;
};
const gateway = (): Deployment => find<Deployment>('Deployment', 'hsm-gateway');
const redis = (): Deployment => find<Deployment>('Deployment', 'hsm-gateway-redis');
const gatewayContainer = (): Container => gateway().spec.template.spec.containers.find((c) => c.name === 'gateway')!;
const matches = (selector: Labels, labels: Labels): boolean => Object.entries(selector).every(([k, v]) => labels[k] === v);
const podLabels = (d: Deployment): Labels => d.spec.template.metadata.labels;

/** The port a probe or a Service's targetPort names: a container port, by name or number. */
function containerPort(container: Container, port: number | string | undefined): number | undefined {
  return container.ports?.find((p) => (typeof port === 'number' ? p.containerPort === port : p.name === port))?.containerPort;
}

/** The gateway config the ConfigMap carries, loaded by the gateway's own loader (no environment overrides). */
function clusterConfig(): Config {
  return loadConfig(join(K8S, 'config/gateway.yaml'), {});
}

/** Every secret reference in a config, with where it sits. */
function secretRefs(config: Config): Array<{ where: string; ref: SecretRef }> {
  const refs: Array<{ where: string; ref: SecretRef | undefined }> = [
    { where: 'hsm.pin', ref: config.hsm.pin },
    ...Object.entries(config.tokens).map(([name, t]) => ({ where: `tokens.${name}.pin`, ref: t.pin })),
    { where: 'server.tls.key', ref: config.server.tls?.key },
    { where: 'throttle.redis.password', ref: config.throttle.redis?.password },
    ...config.auth.accessKeys.flatMap((k) => [
      { where: `${k.accessKeyId}.secret`, ref: k.secret },
      { where: `${k.accessKeyId}.secondarySecret`, ref: k.secondarySecret },
    ]),
  ];
  return refs.filter((r): r is { where: string; ref: SecretRef } => r.ref !== undefined);
}

/** The commented example Secret: the YAML after its `#apiVersion:` line, uncommented. */
function exampleSecret(): { text: string; object: K8sObject & { stringData: Record<string, string> } } {
  const text = readFileSync(join(K8S, 'secret.example.yaml'), 'utf8');
  const lines = text.split('\n');
  const start = lines.findIndex((l) => l.startsWith('#apiVersion:'));
  const yaml = lines.slice(start).map((l) => l.replace(/^#/, '')).join('\n');
  return { text, object: parse(yaml, { version: '1.1' }) as K8sObject & { stringData: Record<string, string> } };
}

/** kubernetes-models' schema check for one object (types, required fields, formats, enums). */
async function schemaErrors(object: K8sObject): Promise<string | undefined> {
  let Model: new (data: unknown) => { validate(): void };
  try {
    const mod = (await import(/* @vite-ignore */ `kubernetes-models/${object.apiVersion}/${object.kind}`)) as Record<string, typeof Model>;
    Model = mod[object.kind]!;
  } catch {
    return `no schema for ${object.apiVersion} ${object.kind}`;
  }
  try {
    new Model(object).validate();
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

/**
 * Unknown fields, refused the way the API server's strict field validation refuses them (kubectl's default): the
 * JSON schemas kubernetes-models validates with allow unknown properties, so each object is type-checked as an
 * object literal against the package's TypeScript interface, where an excess property anywhere is an error.
 */
function unknownFieldErrors(objects: Array<{ label: string; object: K8sObject }>): string[] {
  const file = join(root, 'test/integration/__deploy_manifests_strict__.ts');
  let header = '';
  let body = '';
  const ranges: Array<{ start: number; end: number; label: string }> = [];
  objects.forEach(({ label, object }, i) => {
    header += `import type { I${object.kind} as T${i} } from 'kubernetes-models/${object.apiVersion}/${object.kind}';\n`;
    const start = body.length;
    body += `export const object${i}: T${i} = ${JSON.stringify(object)};\n`;
    ranges.push({ start, end: body.length, label });
  });
  const text = header + body;
  const options: ts.CompilerOptions = {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
    lib: ['lib.es2022.d.ts'], // no DOM: faster, and nothing here needs it
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
  };
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile.bind(host);
  const fileExists = host.fileExists.bind(host);
  const readFile = host.readFile.bind(host);
  host.getSourceFile = (name, language, ...rest) => (name === file ? ts.createSourceFile(name, text, language) : getSourceFile(name, language, ...rest));
  host.fileExists = (name) => name === file || fileExists(name);
  host.readFile = (name) => (name === file ? text : readFile(name));
  const program = ts.createProgram([file], options, host);
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const at = (d.start ?? 0) - header.length;
    const label = ranges.find((r) => at >= r.start && at < r.end)?.label ?? 'imports';
    return `${label}: ${ts.flattenDiagnosticMessageText(d.messageText, ' ')}`;
  });
}

const label = (s: Source): string => `${s.file}: ${s.object.kind} ${s.object.metadata.name}`;

describe('deploy/kubernetes: every manifest against the Kubernetes schemas', () => {
  it('when the folder is listed, then every manifest is in kustomization.yaml (and only the commented example Secret is not)', () => {
    const files = readdirSync(K8S).filter((f) => /\.ya?ml$/.test(f));
    const k = kustomization();
    expect(k).toMatchObject({ apiVersion: 'kustomize.config.k8s.io/v1beta1', kind: 'Kustomization', namespace: 'hsm-gateway' });
    expect([...k.resources, 'kustomization.yaml', 'secret.example.yaml'].sort()).toEqual(files.sort());
    for (const g of k.configMapGenerator ?? []) for (const f of g.files) expect(existsSync(join(K8S, f)), f).toBe(true);
    expect(manifestObjects().map((s) => `${s.object.kind}/${s.object.metadata.name}`).sort()).toEqual([
      'ConfigMap/hsm-gateway-config',
      'Deployment/hsm-gateway',
      'Deployment/hsm-gateway-redis',
      'Namespace/hsm-gateway',
      'NetworkPolicy/hsm-gateway-redis',
      'PodDisruptionBudget/hsm-gateway',
      'Service/hsm-gateway',
      'Service/hsm-gateway-redis',
    ]);
  });

  it('when each object is validated with the kubernetes-models schema of its kind, then none has an error', async () => {
    for (const s of manifestObjects()) expect(await schemaErrors(s.object), label(s)).toBeUndefined();
  });

  it('when each object is type-checked against its Kubernetes type, then no field is unknown', () => {
    expect(unknownFieldErrors(manifestObjects().map((s) => ({ label: label(s), object: s.object })))).toEqual([]);
  });

  it('when a manifest has a wrong type, a missing field or a misspelt field, then the checks report it (they can fail)', async () => {
    const d = structuredClone(gateway());
    (d.spec as { replicas: unknown }).replicas = 'two';
    expect(await schemaErrors(d)).toMatch(/replicas must be integer/);
    const noContainers = structuredClone(gateway());
    delete (noContainers.spec.template.spec as Partial<PodSpec>).containers;
    expect(await schemaErrors(noContainers)).toMatch(/must have required property '?containers'?/);
    const typo = structuredClone(gateway());
    (typo.spec.template.spec.containers[0] as unknown as Record<string, unknown>).imagePullPolice = 'Always';
    expect(await schemaErrors(typo), 'the JSON schema alone lets unknown fields through').toBeUndefined();
    const errors = unknownFieldErrors([{ label: 'typo', object: typo }]);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatch(/^typo: .*'"?imagePullPolice"?' does not exist in type 'IContainer'/);
    expect(unknownFieldErrors([{ label: 'kind', object: { apiVersion: 'v1', kind: 'NoSuchKind', metadata: { name: 'x' } } }])[0]).toMatch(/Cannot find module/);
  });

  it.skipIf(!hasCommand('kubectl'))('when kubectl (if installed) renders the kustomization offline, then it holds the same objects, namespaced, with the generated ConfigMap wired in', async () => {
    const r = run('kubectl', ['kustomize', K8S], 'kubectl');
    expect(r.status, r.output).toBe(0);
    const rendered = parseAllDocuments(r.output, { version: '1.1' }).map((d) => d.toJS() as K8sObject);
    const configMap = rendered.find((o) => o.kind === 'ConfigMap')!;
    expect(configMap.metadata.name).toMatch(/^hsm-gateway-config-[a-z0-9]{10}$/);
    const names = (objects: K8sObject[]) => objects.map((o) => `${o.kind}/${o.metadata.name.replace(configMap.metadata.name, 'hsm-gateway-config')}`).sort();
    expect(names(rendered)).toEqual(names(manifestObjects().map((s) => s.object)));
    for (const o of rendered) if (o.kind !== 'Namespace') expect(o.metadata.namespace, `${o.kind}/${o.metadata.name}`).toBe('hsm-gateway');
    const deployment = rendered.find((o) => o.kind === 'Deployment' && o.metadata.name === 'hsm-gateway') as Deployment;
    expect(deployment.spec.template.spec.volumes!.find((v) => v.name === 'config')!.configMap!.name).toBe(configMap.metadata.name);
    for (const o of rendered) expect(await schemaErrors(o), `${o.kind}/${o.metadata.name}`).toBeUndefined();
  });
});

describe('deploy/kubernetes: the pieces fit together', () => {
  it('when the gateway Deployment is read, then it runs ≥ 2 replicas, rolls without going below them and spreads them over nodes', () => {
    const d = gateway();
    expect(d.spec.replicas).toBeGreaterThanOrEqual(2);
    expect(matches(d.spec.selector.matchLabels, podLabels(d))).toBe(true);
    expect(d.spec.strategy).toMatchObject({ type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 0 } });
    const spread = d.spec.template.spec.topologySpreadConstraints ?? [];
    const byHost = spread.find((c) => c.topologyKey === 'kubernetes.io/hostname');
    expect(byHost?.whenUnsatisfiable).toBe('DoNotSchedule');
    for (const c of spread) expect(matches(c.labelSelector.matchLabels, podLabels(d)), c.topologyKey).toBe(true);
  });

  it('when the probes are read, then readiness is /readyz and liveness /healthz, on the port the gateway config listens on', () => {
    const c = gatewayContainer();
    const config = clusterConfig();
    expect(config.server.host).toBe('0.0.0.0');
    expect(c.readinessProbe?.httpGet?.path).toBe('/readyz');
    expect(c.livenessProbe?.httpGet?.path).toBe('/healthz');
    expect(c.startupProbe?.httpGet?.path).toBe('/healthz');
    for (const probe of [c.readinessProbe, c.livenessProbe, c.startupProbe]) {
      expect(containerPort(c, probe!.httpGet!.port)).toBe(config.server.port);
    }
    // The image's port (Containerfile EXPOSE / HSM_GATEWAY_PORT, which overrides server.port) is the same.
    expect(runtimeEnv().HSM_GATEWAY_PORT).toBe(String(config.server.port));
    // Prometheus scrapes the management listener, a container port that no Service exposes.
    expect(config.server.management).toBeDefined();
    expect(config.server.management!.host).toBe('0.0.0.0');
    expect(gateway().spec.template.metadata.annotations?.['prometheus.io/port']).toBe(String(config.server.management!.port));
    expect(containerPort(c, 'management')).toBe(config.server.management!.port);
  });

  it('when a pod stops, then it has the time to drain: grace period > preStop + server.shutdownTimeoutMs', () => {
    const spec = gateway().spec.template.spec;
    const preStop = gatewayContainer().lifecycle?.preStop;
    const preStopSeconds = preStop?.sleep?.seconds ?? Number(preStop?.exec?.command[0] === 'sleep' ? preStop.exec.command[1] : 0);
    expect(preStopSeconds).toBeGreaterThan(0);
    expect(spec.terminationGracePeriodSeconds).toBeGreaterThanOrEqual(preStopSeconds + clusterConfig().server.shutdownTimeoutMs / 1000 + 5);
  });

  it('when the Services, the PodDisruptionBudget and the NetworkPolicy select pods, then each selects exactly the pods it is for', () => {
    const gw = gateway();
    const rd = redis();
    const service = find<Service>('Service', 'hsm-gateway');
    expect(matches(service.spec.selector, podLabels(gw))).toBe(true);
    expect(matches(service.spec.selector, podLabels(rd))).toBe(false);
    for (const p of service.spec.ports) expect(containerPort(gatewayContainer(), p.targetPort ?? p.port), p.name).toBe(clusterConfig().server.port);
    const pdb = find<K8sObject & { spec: { minAvailable: number; selector: { matchLabels: Labels } } }>('PodDisruptionBudget', 'hsm-gateway');
    expect(pdb.spec.minAvailable).toBe(1);
    expect(pdb.spec.minAvailable).toBeLessThan(gw.spec.replicas);
    expect(matches(pdb.spec.selector.matchLabels, podLabels(gw))).toBe(true);
    expect(matches(pdb.spec.selector.matchLabels, podLabels(rd))).toBe(false);
    const policy = find<K8sObject & { spec: { podSelector: { matchLabels: Labels }; ingress: Array<{ from: Array<{ podSelector: { matchLabels: Labels } }>; ports: Array<{ port: string | number }> }> } }>(
      'NetworkPolicy',
      'hsm-gateway-redis',
    );
    expect(matches(policy.spec.podSelector.matchLabels, podLabels(rd))).toBe(true);
    expect(matches(policy.spec.podSelector.matchLabels, podLabels(gw))).toBe(false);
    const from = policy.spec.ingress.flatMap((i) => i.from.map((f) => f.podSelector.matchLabels));
    expect(from.length).toBe(1);
    expect(matches(from[0]!, podLabels(gw))).toBe(true);
    expect(matches(from[0]!, podLabels(rd))).toBe(false);
    for (const p of policy.spec.ingress.flatMap((i) => i.ports)) expect(containerPort(rd.spec.template.spec.containers[0]!, p.port)).toBe(6379);
  });

  it("when the gateway config names Redis, then it is the Redis Service's name and port, and throttle.replicas = the Deployment's replicas", () => {
    const config = clusterConfig();
    const url = new URL(config.throttle.redis!.url);
    const service = find<Service>('Service', url.hostname);
    expect(service.metadata.name).toBe('hsm-gateway-redis');
    const port = service.spec.ports.find((p) => p.port === Number(url.port || 6379))!;
    expect(port, `Service ${url.hostname} has no port ${url.port}`).toBeDefined();
    const rd = redis();
    expect(matches(service.spec.selector, podLabels(rd))).toBe(true);
    expect(containerPort(rd.spec.template.spec.containers[0]!, port.targetPort ?? port.port)).toBe(6379);
    expect(config.throttle.replicas).toBe(gateway().spec.replicas);
    expect(rd.spec.replicas).toBe(1);
  });

  it('when the gateway config is loaded from the ConfigMap by the gateway itself, then it is valid and keeps its registry on the token', () => {
    const configMap = find<K8sObject & { data: Record<string, string> }>('ConfigMap', 'hsm-gateway-config');
    const c = gatewayContainer();
    const configPath = c.env?.find((e) => e.name === 'HSM_GATEWAY_CONFIG')?.value;
    expect(configPath).toBe('/etc/hsm-gateway/gateway.yaml');
    const mount = c.volumeMounts!.find((m) => m.mountPath === dirname(configPath!))!;
    expect(gateway().spec.template.spec.volumes!.find((v) => v.name === mount.name)?.configMap?.name).toBe(configMap.metadata.name);
    expect(Object.keys(configMap.data).sort()).toEqual(['gateway.yaml']);
    // Loaded from a copy of the ConfigMap's data, laid out as the pod sees it.
    const etc = mkdtempSync(join(work, 'configmap-'));
    for (const [key, value] of Object.entries(configMap.data)) writeFileSync(join(etc, key), value);
    const config = loadConfig(join(etc, 'gateway.yaml'), {});
    // One source of truth for every replica: no file overlay that replicas could disagree on.
    expect(config.registry.file).toBeUndefined();
  });

  it('when the config names files, then each is in a volume the gateway mounts: secrets in the Secret, the PKCS#11 module in the HSM client volume', () => {
    const config = clusterConfig();
    const c = gatewayContainer();
    const volumes = gateway().spec.template.spec.volumes!;
    const mountOf = (path: string) => c.volumeMounts!.filter((m) => path.startsWith(`${m.mountPath}/`)).sort((a, b) => b.mountPath.length - a.mountPath.length)[0];
    const volumeOf = (path: string) => volumes.find((v) => v.name === mountOf(path)?.name);
    const refs = secretRefs(config);
    expect(refs.length).toBeGreaterThanOrEqual(2);
    const example = exampleSecret().object;
    for (const { where, ref } of refs) {
      // In the cluster every secret is a file from the Secret, never an environment variable.
      expect('file' in ref, `${where} is not a file reference`).toBe(true);
      const file = (ref as { file: string }).file;
      const volume = volumeOf(file);
      expect(volume?.secret?.secretName, `${where}: ${file} is not in a Secret volume`).toBe('hsm-gateway-secrets');
      expect(mountOf(file)!.readOnly).toBe(true);
      const key = relative(mountOf(file)!.mountPath, file);
      expect(Object.keys(example.stringData), `${where}: key ${key} is missing from secret.example.yaml`).toContain(key);
    }
    expect(volumes.find((v) => v.name === 'secrets')?.secret?.defaultMode).toBe(0o440);
    const hsm = volumeOf(config.hsm.module);
    expect(hsm?.hostPath, `${config.hsm.module} is not in the HSM client volume`).toBeDefined();
    expect(mountOf(config.hsm.module)!.readOnly).toBe(true);
  });

  it('when every ConfigMap and Secret a pod refers to is looked up, then it is in the manifests or is the operator-provided Secret the docs describe', () => {
    const objects = manifestObjects().map((s) => s.object);
    const exists = (kind: string, name: string) => objects.some((o) => o.kind === kind && o.metadata.name === name);
    const operatorProvided = new Set(['Secret/hsm-gateway-secrets']);
    const refs: string[] = [];
    for (const d of [gateway(), redis()]) {
      const spec = d.spec.template.spec;
      for (const v of spec.volumes ?? []) {
        if (v.configMap) refs.push(`ConfigMap/${v.configMap.name}`);
        if (v.secret) refs.push(`Secret/${v.secret.secretName}`);
      }
      for (const c of [...spec.containers, ...(spec.initContainers ?? [])]) {
        for (const e of c.env ?? []) {
          if (e.valueFrom?.secretKeyRef) refs.push(`Secret/${e.valueFrom.secretKeyRef.name}`);
          if (e.valueFrom?.configMapKeyRef) refs.push(`ConfigMap/${e.valueFrom.configMapKeyRef.name}`);
        }
        for (const e of c.envFrom ?? []) {
          if (e.secretRef) refs.push(`Secret/${e.secretRef.name}`);
          if (e.configMapRef) refs.push(`ConfigMap/${e.configMapRef.name}`);
        }
      }
    }
    expect(refs).toContain('Secret/hsm-gateway-secrets');
    for (const ref of refs) {
      const [kind, name] = ref.split('/') as [string, string];
      expect(exists(kind, name) || operatorProvided.has(ref), `${ref} is neither in the manifests nor operator-provided`).toBe(true);
    }
    const readme = readFileSync(join(DEPLOY, 'README.md'), 'utf8');
    for (const ref of operatorProvided) {
      const [kind, name] = ref.split('/') as [string, string];
      expect(readme, `deploy/README.md does not describe ${ref}`).toContain(name);
      const example = exampleSecret().object;
      expect(example).toMatchObject({ kind, metadata: { name, namespace: kustomization().namespace } });
    }
  });

  it('when the pods are read, then they meet the Pod Security "restricted" profile, the one hostPath (the HSM client) apart', () => {
    const image = runtimeStage();
    const imageUser = Number(ops(image, 'USER').at(-1)!.args.split(':')[0]);
    for (const d of [gateway(), redis()]) {
      const spec = d.spec.template.spec;
      const name = d.metadata.name;
      expect(spec.automountServiceAccountToken, name).toBe(false);
      expect(spec.securityContext?.runAsNonRoot, name).toBe(true);
      expect(spec.securityContext?.runAsUser, name).toBeGreaterThan(0);
      expect(spec.securityContext?.seccompProfile?.type, name).toBe('RuntimeDefault');
      for (const c of [...spec.containers, ...(spec.initContainers ?? [])]) {
        const where = `${name}/${c.name}`;
        expect(c.securityContext?.allowPrivilegeEscalation, where).toBe(false);
        expect(c.securityContext?.readOnlyRootFilesystem, where).toBe(true);
        expect(c.securityContext?.privileged ?? false, where).toBe(false);
        expect(c.securityContext?.capabilities?.drop, where).toEqual(['ALL']);
        expect(c.securityContext?.capabilities?.add ?? [], where).toEqual([]);
        expect(c.resources?.requests?.cpu, where).toBeDefined();
        expect(c.resources?.requests?.memory, where).toBeDefined();
        expect(c.resources?.limits?.memory, where).toBeDefined();
        expect(c.image, where).toMatch(/:[\w.-]+$/);
        expect(c.image, where).not.toMatch(/:latest$/);
      }
      for (const v of spec.volumes ?? []) {
        const source = Object.keys(v).filter((k) => k !== 'name');
        expect(source.length, `${name} volume ${v.name}`).toBe(1);
        if (v.hostPath) expect(`${name}/${v.name}`).toBe('hsm-gateway/hsm-client');
        else expect(['configMap', 'secret', 'emptyDir'], `${name} volume ${v.name}`).toContain(source[0]);
      }
    }
    // The gateway runs as the image's user (numeric, so that runAsNonRoot can be checked by the kubelet).
    expect(gateway().spec.template.spec.securityContext?.runAsUser).toBe(imageUser);
  });

  it('when deploy/ is searched for secret values, then there are none: no Secret object, no inline secret env, no private key', () => {
    expect(manifestObjects().filter((s) => s.object.kind === 'Secret')).toEqual([]);
    for (const d of [gateway(), redis()]) {
      for (const c of d.spec.template.spec.containers) {
        for (const e of c.env ?? []) {
          if (/PIN|SECRET|PASSWORD|TOKEN|KEY/i.test(e.name)) expect(e.value, `${c.name} env ${e.name} has an inline value`).toBeUndefined();
        }
      }
    }
    const example = exampleSecret();
    for (const line of example.text.split('\n')) if (line !== '') expect(line, 'secret.example.yaml must stay all comments').toMatch(/^#/);
    for (const [key, value] of Object.entries(example.object.stringData)) expect(value, key).toMatch(/^<[^>]+>$/);
    const files = (dir: string): string[] => readdirSync(dir).flatMap((f) => (statSync(join(dir, f)).isDirectory() ? files(join(dir, f)) : [join(dir, f)]));
    for (const file of files(DEPLOY)) {
      expect(readFileSync(file, 'utf8'), relative(root, file)).not.toMatch(/-----BEGIN [A-Z ]*PRIVATE KEY-----/);
    }
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Kubernetes, the PostgreSQL variant (deploy/kubernetes-postgres: an overlay of deploy/kubernetes, beside it: kustomize
// refuses an overlay inside its base)
// ---------------------------------------------------------------------------------------------------------------

const PG = join(DEPLOY, 'kubernetes-postgres');
interface Job extends K8sObject {
  spec: { backoffLimit?: number; template: { metadata: { labels: Labels }; spec: PodSpec & { restartPolicy: string } } };
}
const postgresKustomization = (): Kustomization => parse(readFileSync(join(PG, 'kustomization.yaml'), 'utf8'), { version: '1.1' }) as Kustomization;

/** The objects `kubectl apply -k deploy/kubernetes-postgres` creates: the base's, its ConfigMap replaced, plus the Job. */
function postgresObjects(): Source[] {
  const k = postgresKustomization();
  const generated = (k.configMapGenerator ?? []).map((g) => ({
    file: 'kubernetes-postgres/kustomization.yaml',
    object: { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: g.name, namespace: k.namespace }, data: Object.fromEntries(g.files.map((f) => [basename(f), readFileSync(join(PG, f), 'utf8')])) },
  }));
  const replaced = (s: Source): boolean => generated.some((g) => g.object.kind === s.object.kind && g.object.metadata.name === s.object.metadata.name);
  const added = k.resources
    .filter((r) => r !== '../kubernetes')
    .flatMap((file) => documents(`../kubernetes-postgres/${file}`).map((object) => ({ file: `kubernetes-postgres/${file}`, object: { ...object, metadata: { ...object.metadata, namespace: k.namespace } } })));
  return [...manifestObjects().filter((s) => !replaced(s)), ...generated, ...added];
}
const registryInitJob = (): Job => postgresObjects().find((s) => s.object.kind === 'Job')!.object as Job;
const postgresConfig = (): Config => loadConfig(join(PG, 'config/gateway.yaml'), {});

describe('deploy/kubernetes-postgres: the registry in PostgreSQL', () => {
  it('when the overlay is read, then it is deploy/kubernetes with its config replaced and the registry-init Job added, and lists every manifest of its folder', () => {
    const k = postgresKustomization();
    expect(k).toMatchObject({ apiVersion: 'kustomize.config.k8s.io/v1beta1', kind: 'Kustomization', namespace: kustomization().namespace });
    expect(k.resources).toEqual(['../kubernetes', 'registry-init-job.yaml']);
    expect(k.configMapGenerator).toEqual([{ name: 'hsm-gateway-config', behavior: 'replace', files: ['config/gateway.yaml'] }]);
    expect([...k.resources.filter((r) => r !== '../kubernetes'), 'kustomization.yaml'].sort()).toEqual(readdirSync(PG).filter((f) => /\.ya?ml$/.test(f)).sort());
    expect(postgresObjects().map((s) => `${s.object.kind}/${s.object.metadata.name}`).sort()).toEqual(
      [...manifestObjects().map((s) => `${s.object.kind}/${s.object.metadata.name}`), 'Job/hsm-gateway-registry-init'].sort(),
    );
  });

  it('when the Job is validated against its schema and type-checked, then it has no error and no unknown field', async () => {
    const job = postgresObjects().find((s) => s.object.kind === 'Job')!;
    expect(await schemaErrors(job.object), label(job)).toBeUndefined();
    expect(unknownFieldErrors([{ label: label(job), object: job.object }])).toEqual([]);
  });

  it.skipIf(!hasCommand('kubectl'))('when kubectl (if installed) renders the overlay offline, then it holds the same objects and the gateway and the Job mount the generated PostgreSQL config', async () => {
    const r = run('kubectl', ['kustomize', PG], 'kubectl');
    expect(r.status, r.output).toBe(0);
    const rendered = parseAllDocuments(r.output, { version: '1.1' }).map((d) => d.toJS() as K8sObject);
    const configMap = rendered.find((o) => o.kind === 'ConfigMap') as K8sObject & { data: Record<string, string> };
    expect(configMap.metadata.name).toMatch(/^hsm-gateway-config-[a-z0-9]{10}$/);
    expect(configMap.data['gateway.yaml']).toBe(readFileSync(join(PG, 'config/gateway.yaml'), 'utf8'));
    const names = (objects: K8sObject[]) => objects.map((o) => `${o.kind}/${o.metadata.name.replace(configMap.metadata.name, 'hsm-gateway-config')}`).sort();
    expect(names(rendered)).toEqual(names(postgresObjects().map((s) => s.object)));
    for (const o of rendered) if (o.kind !== 'Namespace') expect(o.metadata.namespace, `${o.kind}/${o.metadata.name}`).toBe('hsm-gateway');
    for (const kind of ['Deployment', 'Job']) {
      const o = rendered.find((x) => x.kind === kind && x.metadata.name.startsWith('hsm-gateway') && x.metadata.name !== 'hsm-gateway-redis') as Deployment;
      expect(o.spec.template.spec.volumes!.find((v) => v.name === 'config')!.configMap!.name, kind).toBe(configMap.metadata.name);
    }
    for (const o of rendered) expect(await schemaErrors(o), `${o.kind}/${o.metadata.name}`).toBeUndefined();
  });

  it('when its config is loaded, then it keeps the registry in PostgreSQL, its password is a file of the Secret, and it is the base config but for the registry', () => {
    const config = postgresConfig();
    expect(config.registry.store).toBe('postgres');
    expect(config.registry.postgres!.url).toMatch(/^postgres:\/\/hsm_gateway@[^:/]+(:\d+)?\/hsm_gateway$/);
    const password = config.registry.postgres!.password as { file: string };
    expect(password.file).toBe('/run/secrets/hsm-gateway/pg-password');
    expect(Object.keys(exampleSecret().object.stringData)).toContain('pg-password');
    const { registry: _pg, ...rest } = config;
    const { registry: _token, ...base } = clusterConfig();
    expect(rest).toEqual(base);
  });

  it('when the Job is read, then it runs registry init once, with the volumes the gateway has at the same paths, in the restricted profile, and no Service or PDB selects it', () => {
    const job = registryInitJob();
    const spec = job.spec.template.spec;
    expect(spec.restartPolicy).toBe('Never');
    const [c] = spec.containers;
    expect(spec.containers).toHaveLength(1);
    expect(c!.image).toBe(gatewayContainer().image);
    expect(c!.command).toEqual(['node', 'bin/hsm-gateway.cjs', 'registry', 'init']);
    expect(c!.env?.find((e) => e.name === 'HSM_GATEWAY_CONFIG')?.value).toBe('/etc/hsm-gateway/gateway.yaml');
    const gw = gateway().spec.template.spec;
    for (const name of ['config', 'secrets', 'hsm-client']) {
      expect(spec.volumes!.find((v) => v.name === name), name).toEqual(gw.volumes!.find((v) => v.name === name));
      expect(c!.volumeMounts!.find((m) => m.name === name), name).toEqual(gatewayContainer().volumeMounts!.find((m) => m.name === name));
    }
    expect(spec.securityContext).toEqual(gw.securityContext);
    expect(spec.automountServiceAccountToken).toBe(false);
    expect(c!.securityContext).toEqual(gatewayContainer().securityContext);
    expect(c!.resources?.limits?.memory).toBeDefined();
    for (const selector of [find<Service>('Service', 'hsm-gateway').spec.selector, find<K8sObject & { spec: { selector: { matchLabels: Labels } } }>('PodDisruptionBudget', 'hsm-gateway').spec.selector.matchLabels]) {
      expect(matches(selector, job.spec.template.metadata.labels)).toBe(false);
    }
  });
});
