/**
 * CHAP (RFC 1994) as iSCSI uses it (RFC 7143 §12.1.3): MD5 over the
 * identifier byte, the secret and the challenge, values in hex with a 0x prefix.
 */
import crypto from 'node:crypto';

export interface ChapSecret {
  username: string;
  secret: string;
}

export function chapResponse(id: number, secret: string, challenge: Buffer): Buffer {
  return crypto.createHash('md5').update(Buffer.from([id & 0xff])).update(secret, 'utf8').update(challenge).digest();
}

/** Decodes a CHAP binary value (0x hex or 0b base64); null when malformed. */
export function decodeChapValue(v: string): Buffer | null {
  if (/^0x([0-9a-f]{2})+$/i.test(v)) return Buffer.from(v.slice(2), 'hex');
  if (/^0b[A-Za-z0-9+/]+=*$/.test(v)) return Buffer.from(v.slice(2), 'base64');
  return null;
}

export const encodeChapValue = (b: Buffer): string => `0x${b.toString('hex')}`;

/** Constant-time comparison of two responses. */
export function sameResponse(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}
