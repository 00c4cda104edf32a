import fs from 'node:fs';
import { BlockgateError } from '../common/errors.js';
import { writeAtomically } from '../common/files.js';

/**
 * Who an array file belongs to, kept beside it in `NAME.img.id` (a sidecar,
 * not a header: the array's bytes stay exactly the volumes' bytes, and an
 * admin can read it with cat). `file` is the inode the identity was written
 * for: when an array file is copied with its sidecar, the copy is a different
 * inode, so it can be told apart from the very file another appliance opens.
 */
export interface ArrayIdentity {
  kind: 'blockgate-array';
  version: 1;
  appliance: string;
  dataDir: string;
  array: number;
  name: string;
  size: number;
  file: { dev: number; ino: number };
  writtenAt: string;
}

export interface ArrayClaim {
  appliance: string;
  /** The claiming appliance's data directory, real path. */
  dataDir: string;
  array: number;
  name: string;
  size: number;
}

export type IdentityVerdict =
  /** No identity yet (a new file, or one from before identities existed). */
  | { kind: 'unstamped' }
  /** Ours, as claimed. */
  | { kind: 'ours'; identity: ArrayIdentity; restamp: boolean }
  /** The identity travelled with a copy of another appliance's array: this inode is not theirs. */
  | { kind: 'copy'; identity: ArrayIdentity }
  /** The very file another data directory's appliance owns. */
  | { kind: 'foreign'; identity: ArrayIdentity }
  /** Ours by data directory, but a different appliance or array id: not the array the claim says. */
  | { kind: 'mismatch'; identity: ArrayIdentity; reason: string };

export const identityFile = (arrayFile: string): string => `${arrayFile}.id`;

export async function readArrayIdentity(arrayFile: string): Promise<ArrayIdentity | null> {
  let text: string;
  try {
    text = await fs.promises.readFile(identityFile(arrayFile), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new BlockgateError('IO_ERROR', `cannot read the identity of array file ${arrayFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  try {
    const id = JSON.parse(text) as ArrayIdentity;
    if (id.kind !== 'blockgate-array' || typeof id.appliance !== 'string' || typeof id.dataDir !== 'string' || typeof id.array !== 'number') throw new Error('not an array identity');
    return id;
  } catch (e) {
    throw new BlockgateError('CONFLICT', `the identity file ${identityFile(arrayFile)} is damaged (${(e as Error).message}); move it away only if you are sure no other appliance uses ${arrayFile}`, {
      file: arrayFile,
    });
  }
}

/** Judges a claim on an existing array file against the identity beside it. Reads only. */
export async function checkArrayIdentity(arrayFile: string, claim: ArrayClaim): Promise<IdentityVerdict> {
  const id = await readArrayIdentity(arrayFile);
  if (!id) return { kind: 'unstamped' };
  const st = await fs.promises.stat(arrayFile).catch(() => null);
  const sameInode = st !== null && st.dev === id.file?.dev && st.ino === id.file?.ino;
  if (id.dataDir !== claim.dataDir) return sameInode ? { kind: 'foreign', identity: id } : { kind: 'copy', identity: id };
  if (id.appliance !== claim.appliance) return { kind: 'mismatch', identity: id, reason: `it belongs to appliance ${id.appliance}, not ${claim.appliance}` };
  if (id.array !== claim.array) return { kind: 'mismatch', identity: id, reason: `it is array id ${id.array} ('${id.name}'), not id ${claim.array} ('${claim.name}')` };
  return { kind: 'ours', identity: id, restamp: !sameInode || id.size !== claim.size || id.name !== claim.name };
}

/** Writes the identity for `arrayFile` as it is now (its inode), atomically. Control path only. */
export async function writeArrayIdentity(arrayFile: string, claim: ArrayClaim): Promise<void> {
  const st = await fs.promises.stat(arrayFile);
  const id: ArrayIdentity = {
    kind: 'blockgate-array',
    version: 1,
    appliance: claim.appliance,
    dataDir: claim.dataDir,
    array: claim.array,
    name: claim.name,
    size: claim.size,
    file: { dev: st.dev, ino: st.ino },
    writtenAt: new Date().toISOString(),
  };
  await writeAtomically(identityFile(arrayFile), JSON.stringify(id, null, 2) + '\n', 0o644);
}
