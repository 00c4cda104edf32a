import fs from 'node:fs';
import { run, runOk } from './tools.js';
import type { TestServer } from './server.js';

export const M = 1024 * 1024;

/** Polls a job until it leaves queued/running; returns its final resource. */
export async function waitJob(s: TestServer, id: number): Promise<any> {
  for (;;) {
    const j = await s.call('GET', `/v1/jobs/${id}`);
    if (j.state !== 'queued' && j.state !== 'running') return j;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Export names a host's own listener lists (its namespace as the host sees it). */
export async function listExports(s: TestServer, host: string): Promise<string[]> {
  const r = await runOk('nbdinfo', ['--list', '--json', `nbd+unix:///?socket=${s.socket(host)}`]);
  return (JSON.parse(r.stdout) as { exports: { 'export-name': string }[] }).exports.map((e) => e['export-name']).sort();
}

/** qemu-io commands against a unit; resolves with the run result (code 0 = every command passed). */
export function qemuIo(s: TestServer, host: string, unit: string, ...cmds: string[]): ReturnType<typeof run> {
  return run('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), s.unixUri(host, unit)]);
}

/** True when qemu-io ran every command and no read verify failed. */
export function ioOk(r: { code: number | null; stdout: string; stderr: string }): boolean {
  return r.code === 0 && !/Pattern verification failed|failed/.test(r.stdout + r.stderr);
}

/** Reads bytes straight from a backing file (below the appliance). */
export function readFileRegion(file: string, offset: number, length: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const b = Buffer.alloc(length);
    fs.readSync(fd, b, 0, length, offset);
    return b;
  } finally {
    fs.closeSync(fd);
  }
}

/** True when every byte of the file region equals `byte`, read in chunks. */
export function regionIs(file: string, offset: number, length: number, byte: number): boolean {
  for (let o = 0; o < length; o += 4 * M) {
    const n = Math.min(4 * M, length - o);
    const b = readFileRegion(file, offset + o, n);
    for (let i = 0; i < n; i++) if (b[i] !== byte) return false;
  }
  return true;
}
