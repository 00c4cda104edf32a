import { BlockgateError } from '../common/errors.js';
import { checkArrayIdentity, writeArrayIdentity, type IdentityVerdict } from '../disks/index.js';
import { describeHolder, probeHolder } from './data-dir-lock.js';

export interface ArrayRef {
  id: number;
  name: string;
  path: string;
  size: number;
}

/**
 * One array file, one appliance: the policy over the identities in
 * disks/array-identity.ts. `check` only reads; `claim` also stamps.
 */
export class Ownership {
  constructor(private readonly dataDir: string) {}

  /** Throws CONFLICT unless `appliance` may open the array; returns what it found. */
  async check(a: ArrayRef, appliance: string): Promise<IdentityVerdict> {
    const v = await checkArrayIdentity(a.path, { appliance, dataDir: this.dataDir, array: a.id, name: a.name, size: a.size });
    if (v.kind === 'foreign') {
      const id = v.identity;
      const { live, holder } = await probeHolder(id.dataDir);
      const who = live ? `in use by ${describeHolder(holder, id.dataDir)}` : 'not running now';
      throw new BlockgateError(
        'CONFLICT',
        `array '${a.name}' (${a.path}) belongs to appliance ${id.appliance} at data directory ${id.dataDir} (${who}): ` +
          'one array file is served by one appliance only; restore that appliance in its own data directory, or copy the file',
        { array: a.name, file: a.path, owner: { appliance: id.appliance, dataDir: id.dataDir, live, pid: live ? (holder?.pid ?? null) : null } },
      );
    }
    if (v.kind === 'mismatch') {
      throw new BlockgateError('CONFLICT', `array file ${a.path} is not array '${a.name}' of appliance ${appliance}: ${v.reason} (see ${a.path}.id)`, {
        array: a.name,
        file: a.path,
      });
    }
    return v;
  }

  /** check(), then writes the identity when there is none yet or it is out of date (a copy, a moved file). */
  async claim(a: ArrayRef, appliance: string): Promise<void> {
    const v = await this.check(a, appliance);
    if (v.kind === 'ours' && !v.restamp) return;
    await this.stamp(a, appliance);
  }

  stamp(a: ArrayRef, appliance: string): Promise<void> {
    return writeArrayIdentity(a.path, { appliance, dataDir: this.dataDir, array: a.id, name: a.name, size: a.size });
  }
}
