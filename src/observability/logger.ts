import winston from 'winston';

/** Structured JSON logs on stdout. Request lines carry `requestId`; secrets never reach a log call. */
export function createLogger(level: string): winston.Logger {
  return winston.createLogger({
    level,
    format: winston.format.combine(winston.format.timestamp(), winston.format.json()),
    defaultMeta: { service: 'hsm-gateway' },
    transports: [new winston.transports.Console()],
  });
}

export type Logger = winston.Logger;
