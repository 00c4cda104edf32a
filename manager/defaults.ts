import type { StorageManager } from './manager.js';

/** The embedded default appliance `blockgate serve` creates on first start. */
export const DEMO = {
  farm: 'default',
  array: { name: 'array0', size: 1024 ** 3 },
  host: 'demo',
  /** The demo host's iSCSI initiator name: `iscsi-ls -i <this> iscsi://127.0.0.1:3260` works on a fresh start. */
  initiator: 'iqn.2026-11.io.blockgate:demo-initiator',
  volume: { name: 'demo-boot', size: 256 * 1024 ** 2 },
} as const;

/**
 * Creates whatever part of the demo appliance is missing. Each step checks
 * first, so a start interrupted half-way finishes the job and a restart
 * creates nothing twice; once complete it is never re-run (an admin may have
 * deleted parts of it on purpose).
 */
export async function seedDemo(m: StorageManager): Promise<boolean> {
  if (m.setting('seeded') !== undefined) return false;
  if (!m.findFarm(DEMO.farm)) m.createFarm(DEMO.farm);
  if (!m.findArray(DEMO.array.name)) await m.createArray(DEMO.array.name, DEMO.array.size);
  if (!m.findHost(DEMO.host)) await m.createHost({ name: DEMO.host, farm: DEMO.farm });
  if (!m.findVolume(DEMO.volume.name)) m.createVolume({ name: DEMO.volume.name, size: DEMO.volume.size, farm: DEMO.farm, configure: true });
  // A start cut off between allocate and configure finishes the step.
  if (m.volume(DEMO.volume.name).state === 'allocated') m.configure(DEMO.volume.name);
  const host = m.host(DEMO.host);
  if (m.bindingsOfHost(host.id).length === 0) {
    m.bind({ volume: DEMO.volume.name, host: DEMO.host, target: 0, lun: 0, map: true });
  }
  if (!m.iscsi.initiator(DEMO.initiator)) m.iscsi.addInitiator(DEMO.host, DEMO.initiator);
  m.setSetting('nbd.default_host', DEMO.host);
  m.setSetting('seeded', new Date().toISOString());
  return true;
}
