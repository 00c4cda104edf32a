import type { Command } from 'commander';
import { client, details, out, verb } from '../context.js';

/** `blockgate status`: is the appliance up, which one, and where. */
export function register(program: Command): void {
  verb(program, 'status', 'liveness, version and appliance id of the control API').action(async (_o, cmd: Command) => {
    const api = client(cmd);
    const h = await api.call<Record<string, unknown>>('GET', '/v1/health');
    const r = { ...h, api: api.conn.api };
    out(cmd, r, () => details(r));
  });
}
