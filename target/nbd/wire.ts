/**
 * Encoders for what the server writes in transmission: simple replies,
 * structured reply chunk headers, base:allocation status words. Callers
 * pass the buffer and position, so replies are built in place in buffers
 * they own (arena, recycled, or one shared with the payload).
 */
import type { AllocationState } from '../core/index.js';
import { SIMPLE_REPLY_MAGIC, STATE_HOLE, STATE_ZERO, STRUCTURED_REPLY_MAGIC } from './constants.js';

export const SIMPLE_REPLY_SIZE = 16;

export function writeSimpleReply(b: Buffer, p: number, errno: number, cookieHi: number, cookieLo: number): void {
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, p);
  b.writeUInt32BE(errno, p + 4);
  b.writeUInt32BE(cookieHi, p + 8);
  b.writeUInt32BE(cookieLo, p + 12);
}

export function writeChunkHeader(b: Buffer, p: number, flags: number, type: number, cookieHi: number, cookieLo: number, length: number): void {
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, p);
  b.writeUInt16BE(flags, p + 4);
  b.writeUInt16BE(type, p + 6);
  b.writeUInt32BE(cookieHi, p + 8);
  b.writeUInt32BE(cookieLo, p + 12);
  b.writeUInt32BE(length, p + 16);
}

/** A 64-bit offset as two 32-bit words (offsets stay below 2^53). */
export function writeOffset(b: Buffer, p: number, offset: number): void {
  b.writeUInt32BE(Math.floor(offset / 0x100000000), p);
  b.writeUInt32BE(offset >>> 0, p + 4);
}

/** base:allocation flags of a run: a hole reads as zeroes too; an allocated zero run is ZERO alone. */
export function allocationFlags(state: AllocationState): number {
  return state === 'data' ? 0 : state === 'zero' ? STATE_ZERO : STATE_HOLE | STATE_ZERO;
}
