import { formatSize } from '../../common/units.js';

/** Human size: exact when it divides evenly (4G), else one decimal (1.5G). */
export function humanSize(bytes: number): string {
  if (bytes < 1024) return `${bytes}B`;
  const exact = formatSize(bytes);
  if (!/^\d+B$/.test(exact) && exact.length <= 6) return exact;
  const units = ['K', 'M', 'G', 'T'];
  let v = bytes;
  let i = -1;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(1)}${units[i]}`;
}

export type Column<T> = [header: string, get: (row: T) => unknown];

/** A plain text table, columns padded to their widest cell. */
export function table<T>(rows: readonly T[], columns: readonly Column<T>[]): string {
  const cells = rows.map((r) => columns.map(([, get]) => cellText(get(r))));
  const headers = columns.map(([h]) => h);
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (cs: string[]): string => cs.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(headers), ...cells.map(line)].join('\n') + '\n';
}

function cellText(v: unknown): string {
  if (v === null || v === undefined) return '-';
  if (typeof v === 'boolean') return v ? 'yes' : 'no';
  if (Array.isArray(v)) return v.join(',');
  return String(v);
}

/** Key/value listing for `show` verbs. */
export function details(obj: Record<string, unknown>): string {
  const keys = Object.keys(obj);
  const w = Math.max(...keys.map((k) => k.length));
  return keys.map((k) => `${k.padEnd(w)}  ${typeof obj[k] === 'object' && obj[k] !== null ? JSON.stringify(obj[k]) : cellText(obj[k])}`).join('\n') + '\n';
}

export function print(s: string): void {
  process.stdout.write(s);
}

export function printJson(v: unknown): void {
  process.stdout.write(JSON.stringify(v, null, 2) + '\n');
}
