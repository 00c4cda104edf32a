/**
 * Changed-block tracking: which chunks of a volume hosts wrote since a point
 * in time (the last backup). One bit per chunk; marked when a modifying
 * request settles, so a write held by a consistency group and let go after
 * the backup's snapshot lands in the map that was current after the snapshot.
 * That is exact only because the group's hold drains every modifying request
 * (the store counts those that came before its gate too) and a held write
 * copies up into the snapshot when let go: each request's bytes are in the
 * snapshot of the backup whose map has its mark, never in an earlier one.
 */
export class ChangeMap {
  readonly bits: Uint8Array;
  readonly chunks: number;

  constructor(
    readonly chunk: number,
    readonly size: number,
    bits?: Uint8Array,
  ) {
    this.chunks = Math.ceil(size / chunk);
    const bytes = Math.ceil(this.chunks / 8);
    if (bits && bits.length !== bytes) throw new Error(`change map of ${bits.length} bytes does not fit ${this.chunks} chunks`);
    this.bits = bits ?? new Uint8Array(bytes);
  }

  mark(offset: number, length: number): void {
    if (length <= 0) return;
    const last = Math.min(this.chunks - 1, Math.floor((offset + length - 1) / this.chunk));
    for (let i = Math.floor(offset / this.chunk); i <= last; i++) this.bits[i >> 3]! |= 1 << (i & 7);
  }

  has(i: number): boolean {
    return (this.bits[i >> 3]! & (1 << (i & 7))) !== 0;
  }

  count(): number {
    let n = 0;
    for (let i = 0; i < this.chunks; i++) if (this.has(i)) n++;
    return n;
  }

  /** Adds another map's marks (a backup that failed gives its chunks back). */
  merge(other: ChangeMap): void {
    if (other.chunk !== this.chunk || other.chunks !== this.chunks) return;
    for (let i = 0; i < this.bits.length; i++) this.bits[i]! |= other.bits[i]!;
  }
}

const byStore = new WeakMap<object, Map<number, ChangeMap>>();

/** The change maps of one block store's volumes, by volume id (the manager installs and swaps them). */
export function changeMaps(store: object): Map<number, ChangeMap> {
  let m = byStore.get(store);
  if (!m) byStore.set(store, (m = new Map()));
  return m;
}
