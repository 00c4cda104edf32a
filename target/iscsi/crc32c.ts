/**
 * CRC32C (Castagnoli), the iSCSI header and data digest. Slice-by-8 tables:
 * Node 20 has no CRC32C of its own and digests run on every PDU once
 * negotiated, so the plain byte-at-a-time loop would be the bottleneck.
 */
const POLY = 0x82f63b78;
const T = new Int32Array(8 * 256);
for (let n = 0; n < 256; n++) {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
  T[n] = c;
}
for (let n = 0; n < 256; n++) {
  for (let s = 1; s < 8; s++) {
    const prev = T[(s - 1) * 256 + n]!;
    T[s * 256 + n] = (prev >>> 8) ^ T[prev & 0xff]!;
  }
}

/** Continues a CRC over `buf[start, end)`; pass the previous result (or 0 to start). */
export function crc32c(buf: Uint8Array, start = 0, end = buf.length, prev = 0): number {
  let c = ~prev;
  let i = start;
  const stop8 = end - ((end - i) & 7);
  while (i < stop8) {
    const lo = c ^ (buf[i]! | (buf[i + 1]! << 8) | (buf[i + 2]! << 16) | (buf[i + 3]! << 24));
    c =
      T[7 * 256 + (lo & 0xff)]! ^
      T[6 * 256 + ((lo >>> 8) & 0xff)]! ^
      T[5 * 256 + ((lo >>> 16) & 0xff)]! ^
      T[4 * 256 + (lo >>> 24)]! ^
      T[3 * 256 + buf[i + 4]!]! ^
      T[2 * 256 + buf[i + 5]!]! ^
      T[256 + buf[i + 6]!]! ^
      T[buf[i + 7]!]!;
    i += 8;
  }
  while (i < end) c = T[(c ^ buf[i++]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}
