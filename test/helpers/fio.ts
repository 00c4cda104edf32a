/** fio arguments for a crc32c verify run; no state files left in the cwd. */
export function fioVerifyArgs(uri: string, opts: { jobs: number; size: string; name: string }): string[] {
  return [
    `--name=${opts.name}`,
    '--ioengine=nbd',
    `--uri=${uri}`,
    '--rw=randwrite',
    '--bs=4k',
    '--bsrange=512-64k',
    `--size=${opts.size}`,
    `--numjobs=${opts.jobs}`,
    `--offset_increment=${opts.size}`,
    '--iodepth=16',
    '--verify=crc32c',
    '--verify_fatal=1',
    '--verify_state_save=0',
    '--group_reporting',
    '--output-format=json',
  ];
}
