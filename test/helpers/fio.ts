/**
 * fio's own files go to the test's temp dir, never the working directory
 * (the checkout): by default a verify run leaves `local-NAME-N-verify.state`
 * there. No state is saved at all, and anything fio still writes (a run cut
 * off by a signal) lands in `dir`.
 */
export function fioStateArgs(dir: string): string[] {
  return [`--aux-path=${dir}`, '--verify_state_save=0'];
}

/** fio arguments for a crc32c verify run; its state files stay in `stateDir` (a temp dir). */
export function fioVerifyArgs(uri: string, opts: { jobs: number; size: string; name: string; stateDir: string }): string[] {
  return [
    ...fioStateArgs(opts.stateDir),
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
    '--group_reporting',
    '--output-format=json',
  ];
}
