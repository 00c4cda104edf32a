import type { Frontend, Protocol, Unit } from '../../target/index.js';
import type { BindingProtocol } from '../model.js';
import type { ConnectionDescriptor, IscsiIdentity } from '../views.js';

/** What the descriptor of a host's unit is made from: the appliance, its frontends and the host's identities. */
export interface DescriptorSources {
  appliance: string;
  frontends: readonly Frontend[];
  /** The host's own unix socket, and whether it has a TLS PSK (then TCP URIs need it). */
  socket: string;
  tlsPsk: boolean;
  iscsi: IscsiIdentity;
  /** Identities issued to the host for this unit's VM at a migration: named instead of the host's own. */
  issued?: { nbd: string | null; iscsi: string | null };
}

/**
 * The connection descriptor of one published unit: the one place it is
 * built, for the namespace listing, a protocol switch and a migration.
 * Addresses come from each frontend the unit is served over, in the unit's
 * protocol order; a frontend that cannot reach the host adds nothing.
 */
export function connectionDescriptor(src: DescriptorSources, unit: Unit, protocol: BindingProtocol): ConnectionDescriptor {
  const addresses: ConnectionDescriptor['addresses'] = [];
  for (const p of unit.protocols) {
    const f = src.frontends.find((x) => x.protocol === p);
    const a = f?.address(unit.host, unit);
    if (!a) continue;
    addresses.push({
      protocol: a.protocol,
      uris: a.uris,
      ...(a.exportName !== undefined ? { exportName: a.exportName } : {}),
      ...(a.portal !== undefined ? { portal: a.portal } : {}),
      ...(a.targetName !== undefined ? { targetName: a.targetName } : {}),
      ...(a.lun !== undefined ? { lun: a.lun } : {}),
      credential: credentialFor(src, p, unit.host),
    });
  }
  return {
    appliance: src.appliance,
    host: unit.host,
    target: unit.target,
    lun: unit.lun,
    protocol,
    readOnly: unit.readOnly,
    volume: { name: unit.volumeName, size: unit.volume.layout.size, serial: unit.serial, naa: unit.naa },
    addresses,
  };
}

function credentialFor(src: DescriptorSources, p: Protocol, host: string): ConnectionDescriptor['addresses'][number]['credential'] {
  const issued = src.issued?.[p];
  if (issued) return { kind: p === 'nbd' ? 'tls-psk' : 'chap', ref: issued };
  if (p === 'nbd') return src.tlsPsk ? { kind: 'tls-psk', ref: host } : { kind: 'unix-socket', ref: src.socket };
  if (src.iscsi.chap) return { kind: 'chap', ref: src.iscsi.chap.username ?? host };
  return { kind: 'initiator-name', ref: src.iscsi.initiators.join(',') };
}
