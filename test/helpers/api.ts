import fs from 'node:fs';
import path from 'node:path';
import { run, runOk } from './tools.js';
import type { TestServer } from './server.js';

export const M = 1024 * 1024;

/** Polls a job until it leaves queued/running; returns its final resource (a hang guard, not a timing check). */
export async function waitJob(s: TestServer, id: number, deadlineMs = 600_000): Promise<any> {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    const j = await s.call('GET', `/v1/jobs/${id}`);
    if (j.state !== 'queued' && j.state !== 'running') return j;
    if (Date.now() > deadline) throw new Error(`job ${id} still ${j.state} after ${deadlineMs} ms: ${JSON.stringify(j)}`);
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

/**
 * The backing-fault fixture: two arrays with one volume each, both mapped on host h1 — v0 (a0) at 0/0
 * written with 0x5a, v1 (a1) at 0/1 written with 0x6b, 1 MiB each, flushed. Returns a0's file.
 */
export async function twoArraysWritten(s: TestServer): Promise<{ a0: string }> {
  await s.call('POST', '/v1/farms', { name: 'f' });
  await s.call('POST', '/v1/arrays', { name: 'a0', size: '32M' });
  await s.call('POST', '/v1/arrays', { name: 'a1', size: '32M' });
  await s.call('POST', '/v1/hosts', { name: 'h1', farm: 'f' });
  await s.call('POST', '/v1/volumes', { name: 'v0', size: '16M', farm: 'f', layout: [{ array: 'a0', size: '16M' }] });
  await s.call('POST', '/v1/volumes', { name: 'v1', size: '16M', farm: 'f', layout: [{ array: 'a1', size: '16M' }] });
  await s.call('POST', '/v1/bindings', { volume: 'v0', host: 'h1', target: 0, lun: 0 });
  await s.call('POST', '/v1/bindings', { volume: 'v1', host: 'h1', target: 0, lun: 1 });
  const w0 = await qemuIo(s, 'h1', '0/0', 'write -P 0x5a 0 1M', 'flush');
  const w1 = await qemuIo(s, 'h1', '0/1', 'write -P 0x6b 0 1M', 'flush');
  if (!ioOk(w0) || !ioOk(w1)) throw new Error(`setup writes failed: ${w0.stderr} ${w1.stderr}`);
  return { a0: path.join(s.dataDir, 'arrays', 'a0.img') };
}
