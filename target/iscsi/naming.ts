/**
 * Target names: one target IQN per host and target number, so unit T/L of a
 * host is LUN L of target T with no LUN encoding trick (docs/iscsi.md).
 */
export const IQN_PREFIX = 'iqn.2026-11.io.blockgate:';

export const targetIqn = (host: string, target: number): string => `${IQN_PREFIX}${host}.t${target}`;

/** The host and target number a target name stands for, or null when it is not one of ours. */
export function parseTargetIqn(name: string): { host: string; target: number } | null {
  // RFC 3722: iSCSI names compare case-insensitively after stringprep; ours are lower-case ASCII.
  const n = name.toLowerCase();
  if (!n.startsWith(IQN_PREFIX)) return null;
  const rest = name.slice(IQN_PREFIX.length);
  const m = /^(.+)\.t(\d{1,3})$/.exec(rest);
  if (!m) return null;
  const target = Number(m[2]);
  if (target > 255 || String(target) !== m[2]) return null;
  return { host: m[1]!, target };
}

/** iSCSI names are 1-223 bytes of lower-case letters, digits, '-', '.', ':' (RFC 3720 §3.2.6.1). */
export function isValidIqn(name: string): boolean {
  return name.length >= 4 && name.length <= 223 && /^(iqn\.\d{4}-\d{2}\.[a-z0-9.-]+(:[a-z0-9.:_-]*)?|eui\.[0-9a-f]{16}|naa\.[0-9a-f]{16,32})$/.test(name);
}

/** The LUN number from the 8-byte LUN field: peripheral (00 LL) or flat (01 LLLLLL) addressing (SAM-5). */
export function decodeLun(bhs: Buffer, off = 8): number {
  const b0 = bhs[off]!;
  const method = b0 >> 6;
  if (method === 0 && b0 === 0) return bhs[off + 1]!;
  if (method === 1) return ((b0 & 0x3f) << 8) | bhs[off + 1]!;
  // Other addressing methods or bus numbers: no such LUN here.
  return -1;
}
