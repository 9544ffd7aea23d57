// Markdown tables of a `npm run bench` result (bench/run.mjs), and the targets checked against it.
const n0 = (x) => (x === undefined || Number.isNaN(x) ? '–' : Math.round(x).toLocaleString('en-US'));
const n1 = (x) => (x === undefined || Number.isNaN(x) ? '–' : x.toFixed(1));
const n2 = (x) => (x === undefined || Number.isNaN(x) ? '–' : x.toFixed(2));
const row = (cells) => `| ${cells.join(' | ')} |`;
const processesOf = (run) => (run.gateway.processes > 1 ? `${run.gateway.processes - 1} workers + primary` : '1');

export function markdownReport(r) {
  const m = r.machine;
  const out = [];
  out.push(`### hsm-gateway bench — ${r.started.slice(0, 16).replace('T', ' ')} UTC, ${m.hostname}`);
  out.push('');
  out.push(
    `${m.nproc} cores (${m.cpu}), ${m.memoryGiB} GiB, Node ${m.node}, SoftHSM ${m.softhsm}, ${m.wrk}; load average at start ${m.loadAverageAtStart.join(' ')}. ` +
      `wrk ${r.settings.CONNECTIONS} connections, 1 thread, ${r.settings.SECONDS} s per gateway row; raw token ${r.settings.RAW_SECONDS} s per session count; ` +
      `gateway workers: ${r.settings.workers} (and ${r.settings.clusterWorkers} cluster workers at saturation), sessions per worker: ${r.settings.sessions}. Load generator, gateway and token share the same cores.`,
  );
  out.push('');
  out.push('**Saturation** (wrk as fast as the gateway answers):');
  out.push('');
  out.push(row(['case', 'raw token /s (sessions)', 'gateway processes', 'gateway /s', 'gateway ÷ raw', 'gateway ÷ Express', 'gateway ÷ node:http', 'p50 ms', 'p99 ms', 'p99.9 ms', 'loop lag p99 ms', 'RSS / PSS MB', 'gateway CPU %', 'wrk CPU %', 'machine CPU %', 'errors']));
  out.push(row(Array(16).fill('---')));
  const saturations = r.cases.flatMap((c) => [
    { c, s: c.gateway?.saturation, ratio: c.ratio, versus: c.versus },
    ...(c.cluster?.saturation ? [{ c, s: c.cluster.saturation, ratio: c.cluster.ratio, versus: c.cluster.versus }] : []),
  ]);
  for (const { c, s, ratio, versus } of saturations) {
    out.push(
      row([
        c.name,
        `${n0(c.raw.best.opsPerSecond)} (${c.raw.best.sessions})`,
        s ? processesOf(s) : '–',
        n0(s?.opsPerSecond),
        ratio === undefined ? '–' : `**${n2(ratio)}**`,
        versus?.express === undefined ? '–' : `**${n2(versus.express)}**`,
        n2(versus?.http),
        n2(s?.latencyMs.p50),
        n2(s?.latencyMs.p99),
        n2(s?.latencyMs.p999),
        n1(s?.eventLoopLagP99Ms),
        s ? `${n0(s.gateway.rssMB)} / ${n0(s.gateway.pssMB)}` : '–',
        n0(s?.gateway.cpuPercent),
        n0(s?.wrk.cpuPercent),
        n0(s?.machineCpuPercent),
        s ? String(s.errors) : '–',
      ]),
    );
  }
  const base = r.baselines ?? {};
  if (base.express || base['node:http']) {
    out.push('');
    out.push(
      `Baselines, same run and wrk settings, one process each, answering a body the size of a sign answer: Express 5 hello-world ${n0(base.express?.opsPerSecond)}/s ` +
        `(p99 ${n2(base.express?.latencyMs.p99)} ms, CPU ${n0(base.express?.gateway.cpuPercent)} %), bare node:http ${n0(base['node:http']?.opsPerSecond)}/s ` +
        `(p99 ${n2(base['node:http']?.latencyMs.p99)} ms, CPU ${n0(base['node:http']?.gateway.cpuPercent)} %).`,
    );
  }
  if (r.netsim?.length) {
    out.push('');
    out.push('**Emulated network HSM** (softhsm/netsim in front of SoftHSMv2, the delay added to every PKCS#11 call; one gateway process; bound = min(raw through the emulator, sessions ÷ (2 × delay), what the CPU allows: the same gateway without the emulator, saturated in this run)):');
    out.push('');
    out.push(row(['case', 'delay per call', 'sessions', 'raw via emulator /s', 'gateway without emulator /s', 'bound /s (which)', 'gateway /s', 'gateway ÷ bound', 'sat. p99 ms', '@1,000/s p99 ms', '@1,000/s loop lag p99 ms', 'gateway CPU %', 'errors']));
    out.push(row(Array(13).fill('---')));
    for (const x of r.netsim) {
      const at1000 = x.runs.find((run) => run.rate === 1000);
      out.push(
        row([x.name, `${x.delayUs / 1000} ms`, String(x.sessions), n0(x.raw.opsPerSecond), n0(x.cpuBound), `${n0(x.bound)} (${x.boundBy ?? 'raw via emulator'})`, n0(x.saturation?.opsPerSecond), x.ratio === undefined ? '–' : `**${n2(x.ratio)}**`, n2(x.saturation?.latencyMs.p99), n2(at1000?.latencyMs.p99), n1(at1000?.eventLoopLagP99Ms), n0(x.saturation?.gateway.cpuPercent), String((x.saturation?.errors ?? 0) + (at1000?.errors ?? 0))]),
      );
    }
  }
  out.push('');
  out.push('**Fixed rates** (wrk paced on an absolute schedule; "late" = requests sent > 1 ms after their slot):');
  out.push('');
  out.push(row(['case', 'gateway processes', 'offered /s', 'answered /s', 'p50 ms', 'p99 ms', 'p99.9 ms', 'loop lag p99 ms', 'RSS / PSS MB', 'gateway CPU %', 'wrk CPU %', 'machine CPU %', 'late', 'errors']));
  out.push(row(Array(14).fill('---')));
  for (const c of r.cases) {
    for (const x of [...(c.gateway?.runs ?? []), ...(c.cluster?.runs ?? [])]) {
      out.push(
        row([c.name, processesOf(x), n0(x.rate), n0(x.opsPerSecond), n2(x.latencyMs.p50), n2(x.latencyMs.p99), n2(x.latencyMs.p999), n1(x.eventLoopLagP99Ms), `${n0(x.gateway.rssMB)} / ${n0(x.gateway.pssMB)}`, n0(x.gateway.cpuPercent), n0(x.wrk.cpuPercent), n0(x.machineCpuPercent), String(x.lateSends), String(x.errors)]),
      );
    }
  }
  out.push('');
  out.push('**Official SDK client** (`@alicloud/kms20160120`, 8 requests in flight, in the bench process): the client-side cost per request.');
  out.push('');
  out.push(row(['case', 'requests', 'answered /s', 'p50 ms', 'p99 ms', 'client CPU ms / request', 'errors']));
  out.push(row(Array(7).fill('---')));
  for (const c of r.cases) {
    if (!c.sdk) continue;
    out.push(row([c.name, String(c.sdk.requests), n0(c.sdk.opsPerSecond), n2(c.sdk.latencyMs.p50), n2(c.sdk.latencyMs.p99), n2(c.sdk.clientCpuMsPerRequest), String(c.sdk.errors)]));
  }
  out.push('');
  out.push('**Raw token, sessions swept** (ops/s):');
  out.push('');
  const sessions = r.cases[0]?.raw.sweep.map((s) => s.sessions) ?? [];
  out.push(row(['case', ...sessions.map((s) => `${s}`)]));
  out.push(row(Array(sessions.length + 1).fill('---')));
  for (const c of r.cases) out.push(row([c.name, ...c.raw.sweep.map((s) => n0(s.opsPerSecond))]));
  out.push('');
  out.push('**Targets** (issue #16):');
  out.push('');
  for (const t of targets(r)) out.push(`- ${t.met === undefined ? '–' : t.met ? 'met' : '**not met**'}: ${t.what} — ${t.measured}`);
  return out.join('\n');
}

export function targets(r) {
  const byName = (n) => r.cases.find((c) => c.name === n);
  const rsa = byName('RSA-2048 PKCS#1');
  const p256 = byName('ECDSA P-256');
  const t = [];
  const best = (c) => {
    if (c?.ratio === undefined) return undefined;
    const clustered = c.cluster?.ratio ?? 0;
    return clustered > c.ratio ? { ratio: clustered, how: `${c.cluster.workers} workers` } : { ratio: c.ratio, how: '1 process' };
  };
  for (const [c, name, goal] of [[rsa, 'RSA-2048', 0.75], [p256, 'ECDSA P-256', 0.3]]) {
    const b = best(c);
    t.push({
      what: `${name} gateway ÷ raw token ≥ ${goal} (one process)`,
      measured: c?.ratio === undefined ? 'not run' : `${n2(c.ratio)} (best of the rows: ${n2(b.ratio)}, ${b.how})`,
      met: c?.ratio === undefined ? undefined : c.ratio >= goal,
    });
  }
  if (p256?.versus?.express !== undefined) {
    t.push({ what: 'ECDSA P-256 gateway ÷ Express hello-world ≥ 0.5 (one process)', measured: n2(p256.versus.express), met: p256.versus.express >= 0.5 });
  }
  for (const x of (r.netsim ?? []).filter((row) => row.delayUs === 1000)) {
    t.push({ what: `${x.name}, emulator at 1 ms per call, ${x.sessions} sessions: signs/s ≥ 0.8 × bound`, measured: `${n0(x.saturation?.opsPerSecond)}/s of ${n0(x.bound)}/s (${x.boundBy ?? 'raw via emulator'}) = ${n2(x.ratio)}; raw via emulator ${n0(x.raw.opsPerSecond)}/s, without the emulator ${n0(x.cpuBound)}/s, gateway CPU ${n0(x.saturation?.gateway.cpuPercent)} %`, met: x.ratio === undefined ? undefined : x.ratio >= 0.8 });
    const at1000 = x.runs.find((run) => run.rate === 1000);
    if (at1000) {
      t.push({ what: `${x.name}, emulator at 1 ms, 1,000 req/s: p99 ≤ 10 ms`, measured: `${n2(at1000.latencyMs.p99)} ms`, met: at1000.latencyMs.p99 <= 10 });
      t.push({ what: `${x.name}, emulator at 1 ms, 1,000 req/s: event-loop lag p99 ≤ 5 ms`, measured: `${n1(at1000.eventLoopLagP99Ms)} ms`, met: at1000.eventLoopLagP99Ms === undefined ? undefined : at1000.eventLoopLagP99Ms <= 5 });
    }
  }
  for (const at1000 of [...(p256?.gateway?.runs ?? []), ...(p256?.cluster?.runs ?? [])].filter((x) => x.rate === 1000)) {
    const how = at1000.gateway.processes > 1 ? `${at1000.gateway.processes - 1} workers` : '1 process';
    t.push({ what: `P-256 at 1,000 req/s, ${how}: p99 ≤ 5 ms`, measured: `${at1000.latencyMs.p99.toFixed(2)} ms`, met: at1000.latencyMs.p99 <= 5 });
    t.push({ what: `P-256 at 1,000 req/s, ${how}: event-loop lag p99 ≤ 10 ms`, measured: `${n1(at1000.eventLoopLagP99Ms)} ms (worst process)`, met: at1000.eventLoopLagP99Ms === undefined ? undefined : at1000.eventLoopLagP99Ms <= 10 });
    t.push({
      what: `P-256 at 1,000 req/s, ${how}: memory ≤ 200 MB`,
      measured: `PSS ${n0(at1000.gateway.pssMB)} MB over ${at1000.gateway.processes} process(es) (RSS summed: ${n0(at1000.gateway.rssMB)} MB, which counts the shared Node binary and libraries once per process)`,
      met: at1000.gateway.pssMB <= 200,
    });
  }
  t.push({ what: '10,000 keys: start-up ≤ 10 s, sign latency within 10 % of 10 keys', measured: 'see `npm run bench:sizing`', met: undefined });
  return t;
}
