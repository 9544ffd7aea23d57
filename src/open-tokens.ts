import { readSecret } from './config/load.js';
import type { Config, TokenConfig } from './config/schema.js';
import { CapabilityCache, mechanismFlagNames, mechanismName } from './hsm/capabilities.js';
import { Token, type TokenLogger } from './hsm/token.js';
import { TokenCapabilities } from './keys/key-capabilities.js';
import { cannotMake, type KeyHome } from './keys/lifecycle.js';
import { KEY_SPEC_NAMES } from './signing/key-specs.js';
import { SigningPlans } from './signing/plan.js';

/**
 * Opening the configured tokens, the same way for the gateway (server.ts) and the admin CLI: environment for the
 * module, PIN resolved from its reference, login, and the signing plans each token's mechanisms allow. It wires
 * config, hsm/ and signing/ together, so it sits beside server.ts rather than in hsm/ (which knows no plans).
 */
export interface OpenLogger extends TokenLogger {
  debug(message: string, meta?: Record<string, unknown>): void;
}

/** What a caller may change for its own use of a token (the CLI needs one session and no health probe). */
interface TokenTuning {
  sessions?: number;
  healthIntervalMs?: number;
}

/** The configured tokens by name, the default token ("default", from `hsm`) first. */
export function tokenConfigs(config: Config): Array<readonly [string, TokenConfig]> {
  return [['default', config.hsm] as const, ...Object.entries(config.tokens)];
}

export function openToken(name: string, config: TokenConfig, log: TokenLogger, tuning: TokenTuning = {}): Token {
  // Modules read their configuration from the environment at C_Initialize (SoftHSMv2: SOFTHSM2_CONF).
  if (config.softhsmConf) process.env.SOFTHSM2_CONF = config.softhsmConf;
  for (const [variable, value] of Object.entries(config.environment)) process.env[variable] = value;
  const token = new Token(
    {
      name,
      modulePath: config.module,
      initArgs: config.initArgs,
      tokenLabel: config.tokenLabel,
      pin: readSecret(config.pin),
      sessions: tuning.sessions ?? config.sessions,
      acquireTimeoutMs: config.acquireTimeoutMs,
      maxWaiting: config.maxWaiting,
      operationTimeoutMs: config.operationTimeoutMs,
      healthIntervalMs: tuning.healthIntervalMs ?? config.healthIntervalMs,
    },
    log,
  );
  token.open();
  return token;
}

/** The signing plans of an opened token (decided once, logged). */
function signingPlansOf(name: string, token: Token, config: TokenConfig, log: OpenLogger): SigningPlans {
  const plans = new SigningPlans(token.mechanisms, config.profile, token.mechanismFacts);
  for (const line of plans.describe()) log.debug('signing plan', { token: name, plan: line });
  log.info('signing plans ready', { token: name, plans: plans.describe().length });
  return plans;
}

interface OpenedTokens {
  tokens: Map<string, Token>;
  plans: Map<string, SigningPlans>;
  /** Every token as a place keys can be made on, in configuration order (the default token first). */
  homes: ProbedHome[];
}

export type ProbedHome = KeyHome & { capabilities: TokenCapabilities };

/** An opened token as a place keys are made on, with its capabilities (the deep probe's answer from the cache, if any). */
export function homeOf(name: string, token: Token, config: TokenConfig, log: OpenLogger, cache: CapabilityCache): ProbedHome {
  const home = { name, token, plans: signingPlansOf(name, token, config, log), profile: config.profile };
  return { ...home, capabilities: new TokenCapabilities(home, cache) };
}

/** Opens every configured token; a failure (no token, wrong PIN) is thrown as is. */
export function openTokens(config: Config, log: OpenLogger, tuning: TokenTuning = {}): OpenedTokens {
  const tokens = new Map<string, Token>();
  const plans = new Map<string, SigningPlans>();
  const homes: ProbedHome[] = [];
  const cache = new CapabilityCache(config.capabilities.cacheFile);
  for (const [name, tokenConfig] of tokenConfigs(config)) {
    const token = openToken(name, tokenConfig, log, tuning);
    tokens.set(name, token);
    const home = homeOf(name, token, tokenConfig, log, cache);
    plans.set(name, home.plans);
    homes.push(home);
  }
  return { tokens, plans, homes };
}

/**
 * Start-up: what each token can do, logged. With `capabilities.cacheFile` the deep probe's answer is read from the
 * cache, or probed now (before serving) and written there; without, only what the mechanism list and flags tell.
 */
export async function reportCapabilities(config: Config, homes: readonly ProbedHome[], log: OpenLogger): Promise<void> {
  for (const home of homes) {
    const { capabilities } = home;
    if (config.capabilities.cacheFile) await capabilities.probe();
    const deep = capabilities.known();
    const refused = KEY_SPEC_NAMES.map((spec) => [spec, cannotMake(home, spec)] as const).filter(([, why]) => why !== undefined);
    log.info('token capabilities', {
      token: home.name,
      keySpecs: KEY_SPEC_NAMES.filter((spec) => cannotMake(home, spec) === undefined),
      refused: Object.fromEntries(refused),
      ...(deep
        ? { probedAt: deep.probedAt, fromCache: capabilities.fromCache, privateData: deep.privateData, certificate: deep.certificate, sharedObjects: deep.sharedObjects }
        : { deepProbe: 'not run (hsm-gateway token info runs it; capabilities.cacheFile keeps it for start-up)' }),
    });
    for (const [mechanism, facts] of home.token.mechanismFacts) {
      log.debug('mechanism', { token: home.name, mechanism: mechanismName(mechanism), flags: mechanismFlagNames(facts.flags).join(' '), keySizes: `${facts.minKeySize}–${facts.maxKeySize}` });
    }
  }
}
