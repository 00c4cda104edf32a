import { badRequest } from './errors.js';
import { isIPv6 } from 'node:net';

/** "host:port" or "[v6]:port", as admins write listener addresses. */
export function parseAddress(s: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw badRequest(`address '${s}' is not HOST:PORT`);
  return { host: (m[1] ?? m[2])!, port };
}

export function formatAddress(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

const HOSTNAME_RE = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const IPV4_RE = /^(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const WILDCARDS = new Set(['0.0.0.0', '::', '0:0:0:0:0:0:0:0']);

/**
 * A listener address an admin asks the appliance to open for a host: HOST:PORT
 * with an IPv4 address, a bracketed IPv6 address or a host name, and a real
 * port (1-65535: what is recorded is what listens). A wildcard address opens
 * the host to every network the machine is on, so it needs `allowWildcard`.
 */
export function checkListenerAddress(s: string, opts: { allowWildcard?: boolean } = {}): { host: string; port: number } {
  if (s.trim() === '') throw badRequest('listener address is empty: give HOST:PORT, e.g. 127.0.0.1:10810');
  const a = parseAddress(s);
  const bracketed = s.startsWith('[');
  if (bracketed ? !isIPv6(a.host) : !(IPV4_RE.test(a.host) || (HOSTNAME_RE.test(a.host) && !/^[\d.]+$/.test(a.host)))) {
    throw badRequest(`listener address '${s}': '${a.host}' is not an IPv4 address, a [bracketed] IPv6 address or a host name`);
  }
  if (a.port < 1) throw badRequest(`listener address '${s}': port must be 1-65535 (a host's listener is recorded as it listens, so no ':0')`);
  if (WILDCARDS.has(a.host) && !opts.allowWildcard) {
    throw badRequest(`listener address '${s}' listens on every network of the machine; use one address, or allow it explicitly (allowWildcard)`);
  }
  return a;
}

/** True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost). */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host) || /^::ffff:127\./i.test(host);
}
