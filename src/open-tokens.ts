import { readSecret } from './config/load.js';
import type { Config, TokenConfig } from './config/schema.js';
import { Token, type TokenLogger } from './hsm/token.js';
import type { KeyHome } from './keys/lifecycle.js';
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
export function signingPlansOf(name: string, token: Token, config: TokenConfig, log: OpenLogger): SigningPlans {
  const plans = new SigningPlans(token.mechanisms, config.profile);
  for (const line of plans.describe()) log.debug('signing plan', { token: name, plan: line });
  log.info('signing plans ready', { token: name, plans: plans.describe().length });
  return plans;
}

interface OpenedTokens {
  tokens: Map<string, Token>;
  plans: Map<string, SigningPlans>;
  /** Every token as a place keys can be made on, in configuration order (the default token first). */
  homes: KeyHome[];
}

/** Opens every configured token; a failure (no token, wrong PIN) is thrown as is. */
export function openTokens(config: Config, log: OpenLogger, tuning: TokenTuning = {}): OpenedTokens {
  const tokens = new Map<string, Token>();
  const plans = new Map<string, SigningPlans>();
  const homes: KeyHome[] = [];
  for (const [name, tokenConfig] of tokenConfigs(config)) {
    const token = openToken(name, tokenConfig, log, tuning);
    tokens.set(name, token);
    const tokenPlans = signingPlansOf(name, token, tokenConfig, log);
    plans.set(name, tokenPlans);
    homes.push({ name, token, plans: tokenPlans, profile: tokenConfig.profile });
  }
  return { tokens, plans, homes };
}
