import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

function firstLine(cmd: string, args: string[], cwd?: string): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', cwd });
  if (r.status !== 0) return 'unknown';
  return (r.stdout || r.stderr).split('\n')[0]!.trim();
}

/** What the report must say about where the numbers came from. */
export function machineInfo(): Record<string, string | number> {
  const cpus = os.cpus();
  return {
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    nproc: os.availableParallelism(),
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    kernel: `${os.type()} ${os.release()}`,
    arch: os.arch(),
  };
}

export function versions(root: string): Record<string, string> {
  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string };
  const rev = firstLine('git', ['rev-parse', '--short', 'HEAD'], root);
  const dirty = spawnSync('git', ['status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8', cwd: root }).stdout?.trim() ? '+dirty' : '';
  return {
    node: process.version,
    fio: firstLine('fio', ['--version']).replace(/^fio-/, ''),
    nbdkit: firstLine('nbdkit', ['--version']).replace(/^nbdkit\s+/, ''),
    'qemu-nbd': firstLine('qemu-nbd', ['--version']).replace(/^qemu-nbd\s+/, ''),
    // The iSCSI lane's peer and driver.
    tgtd: firstLine('tgtd', ['--version']),
    'qemu-img': firstLine('qemu-img', ['--version']).replace(/^qemu-img\s+/, ''),
    blockgate: `${pkg.version} (${rev}${dirty})`,
  };
}

/** Filesystem type of a directory (the backing files' home), from df. */
export function filesystemOf(dir: string): string {
  const r = spawnSync('df', ['--output=fstype,target', dir], { encoding: 'utf8' });
  const line = r.stdout?.split('\n')[1]?.trim();
  return line ? line.replace(/\s+/, ' mounted at ') : 'unknown';
}

export function installTools(root: string): void {
  const r = spawnSync('bash', [path.join(root, 'test/setup-tools.sh'), 'fio', 'nbdkit', 'qemu-nbd', 'nbdinfo', 'qemu-img', 'qemu-iscsi', 'tgtd'], { stdio: 'inherit' });
  if (r.status !== 0) throw new Error('test/setup-tools.sh could not install the benchmark tools');
}
