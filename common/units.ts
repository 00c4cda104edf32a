import { badRequest } from './errors.js';

const UNITS: Record<string, number> = {
  '': 1, B: 1,
  K: 1024, KB: 1024, KIB: 1024,
  M: 1024 ** 2, MB: 1024 ** 2, MIB: 1024 ** 2,
  G: 1024 ** 3, GB: 1024 ** 3, GIB: 1024 ** 3,
  T: 1024 ** 4, TB: 1024 ** 4, TIB: 1024 ** 4,
};

/** Parses "4G", "512M", "1.5GiB" or a plain byte count. Sizes are binary (an admin's "4G" is 4 GiB). */
export function parseSize(input: string | number): number {
  if (typeof input === 'number') {
    if (!Number.isSafeInteger(input) || input < 0) throw badRequest(`invalid size ${input}`);
    return input;
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$/.exec(input);
  const mult = m ? UNITS[m[2]!.toUpperCase()] : undefined;
  if (!m || mult === undefined) throw badRequest(`invalid size '${input}' (use e.g. 512M, 4G or a byte count)`);
  const bytes = Math.round(Number(m[1]) * mult);
  if (!Number.isSafeInteger(bytes)) throw badRequest(`size '${input}' is too large`);
  return bytes;
}

export function formatSize(bytes: number): string {
  const steps = ['B', 'K', 'M', 'G', 'T'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < steps.length - 1 && v % 1024 === 0) { v /= 1024; i++; }
  return `${v}${steps[i]}`;
}
