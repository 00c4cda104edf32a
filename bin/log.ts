import { pino, type Logger } from 'pino';
import pinoPretty from 'pino-pretty';
import { badRequest } from '../common/errors.js';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export const LOG_FORMATS = ['auto', 'pretty', 'json'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

/** Checked before anything starts, so a typo is one clear line and exit 2, not a pino stack. */
export function checkLogOptions(level: string, format: string): void {
  if (!(LOG_LEVELS as readonly string[]).includes(level)) throw badRequest(`--log-level '${level}' is not one of ${LOG_LEVELS.join(', ')}`);
  if (!(LOG_FORMATS as readonly string[]).includes(format)) throw badRequest(`--log-format '${format}' is not one of ${LOG_FORMATS.join(', ')}`);
}

/**
 * The appliance's logger on stderr: colored one-line records for a person at
 * a terminal (pino-pretty, in-process and synchronous, so lines never
 * interleave with the banner on stdout out of order), JSON for journald,
 * files and log shippers. `auto` picks by whether stderr is a terminal.
 */
export function makeLogger(level: string, format: LogFormat): Logger {
  const pretty = format === 'pretty' || (format === 'auto' && process.stderr.isTTY === true);
  const base = { level, base: { pid: process.pid } };
  if (!pretty) return pino(base, pino.destination({ fd: 2, sync: true }));
  return pino(
    base,
    pinoPretty({
      destination: 2,
      sync: true,
      colorize: process.stderr.isTTY === true,
      translateTime: 'SYS:HH:MM:ss.l',
      ignore: 'pid,hostname',
      singleLine: true,
    }),
  );
}
