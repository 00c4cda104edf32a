// Builders for raw NBD client frames, for tests that speak the protocol byte by byte.
import { CMD, CMD_FLAG, IHAVEOPT_HI, IHAVEOPT_LO, REQUEST_MAGIC } from '../../target/nbd/constants.js';

export function option(opt: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(16 + data.length);
  b.writeUInt32BE(IHAVEOPT_HI, 0);
  b.writeUInt32BE(IHAVEOPT_LO, 4);
  b.writeUInt32BE(opt, 8);
  b.writeUInt32BE(data.length, 12);
  data.copy(b, 16);
  return b;
}

/** OPT_INFO / OPT_GO payload: name and requested info types. */
export function infoRequest(name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + 2 * i));
  return b;
}

export function request(type: number, cookie: number | bigint, offset: number | bigint, length: number, flags = 0, payload?: Buffer): Buffer {
  const b = Buffer.alloc(28 + (payload?.length ?? 0));
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(BigInt(cookie), 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(length, 24);
  payload?.copy(b, 28);
  return b;
}

export function clientFlags(flags = 3): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(flags, 0);
  return b;
}

/**
 * `count` pipelined READs of `size` bytes (DF set), cookies 1.., offsets cycling over seven
 * `size`-wide slots: what a client that asks for a lot and never reads the replies sends.
 */
export function pipelinedReads(count: number, size: number): Buffer {
  const reqs: Buffer[] = [];
  for (let i = 0; i < count; i++) reqs.push(request(CMD.READ, i + 1, (i % 7) * size, size, CMD_FLAG.DF));
  return Buffer.concat(reqs);
}
