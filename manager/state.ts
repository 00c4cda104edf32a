import { BlockgateError } from '../common/errors.js';

/**
 * The disk-unit state machine of seed 003, FIG. 7 (notes §H, L545–561).
 * This file holds the ONE transition table; every operation that changes a
 * volume's state asks `transition()` first, so an illegal request is refused
 * before anything is touched.
 */
export const VOLUME_STATES = ['free', 'allocated', 'configured', 'bound', 'mapped', 'unmapped', 'unbound', 'unconfigured'] as const;
export type VolumeState = (typeof VOLUME_STATES)[number];

/**
 * Operations in the storage admin's words. `*-failed` are the failure edges:
 * the manager applies them itself when the corresponding operation fails.
 */
export const OPERATIONS = [
  'allocate',
  'configure',
  'configure-failed',
  'copy-image',
  'copy-image-failed',
  'bind',
  'bind-failed',
  'map',
  'map-failed',
  'snap',
  'unmap',
  'unbind',
  'scrub',
  'copy',
  'resize',
  'break',
  'deallocate',
] as const;
export type Operation = (typeof OPERATIONS)[number];

/**
 * state → operation → next state. Comments name the seed's edge (T-numbers
 * from the seed notes' table). Edges not in FIG. 7 are marked "admin" and
 * say why a storage admin needs them.
 */
export const TRANSITIONS: Readonly<Record<VolumeState, Partial<Record<Operation, VolumeState>>>> = {
  free: {
    allocate: 'allocated', // T1
  },
  allocated: {
    configure: 'configured', // T2 Make Meta Volume 708 (a plain volume: configure with no concatenation)
    'configure-failed': 'unconfigured', // T3 711
    break: 'unconfigured', // admin: give back space that was allocated but never used
    resize: 'allocated', // admin: grow before first use
  },
  configured: {
    'copy-image': 'configured', // T4 709
    copy: 'configured', // admin: fill a fresh volume from another, as copy image does from an image
    'copy-image-failed': 'unconfigured', // T5 711
    bind: 'bound', // T6 715
    'bind-failed': 'unconfigured', // T7 712
    break: 'unconfigured', // admin: release a volume that was never bound
    resize: 'configured', // admin: grow
  },
  bound: {
    map: 'mapped', // T8 717
    'map-failed': 'unbound', // T9 718: the bindings are removed
    bind: 'bound', // a shared volume gains another host before mapping
    unbind: 'unbound', // admin: bound but never mapped
    resize: 'bound',
    copy: 'bound', // admin: no host can write an unmapped volume, so it is a copy source (or target: map waits for the job)
  },
  mapped: {
    snap: 'mapped', // T11 726 split/join: point-in-time copy while in use
    unmap: 'unmapped', // T12 727 (stays mapped while another binding is still mapped)
    map: 'mapped', // a shared volume mapped on one more host
    'map-failed': 'mapped', // a further map failing leaves the mapped bindings alone
    bind: 'mapped', // a shared volume gains another host
    unbind: 'mapped', // an unmapped binding of a shared volume removed while others stay mapped
    resize: 'mapped',
  },
  unmapped: {
    unbind: 'unbound', // T13 729
    map: 'mapped', // admin: map again (e.g. boot-disk swap back)
    'map-failed': 'unbound', // T9 as from bound
    bind: 'unmapped',
    copy: 'unmapped', // admin: as from bound
  },
  unbound: {
    bind: 'bound', // T10 721 disk array bind (retry path)
    'bind-failed': 'unconfigured', // T7 as from configured
    scrub: 'unbound', // T14 730
    copy: 'unbound', // Disk Copy 832: unbound to unbound (DR8)
    break: 'unconfigured', // T15 731 Break Meta-Volume
    resize: 'unbound',
  },
  unconfigured: {
    deallocate: 'free', // T16 732
    scrub: 'unconfigured', // a failure edge may leave data behind: scrub before de-allocate
  },
};

export function isVolumeState(s: string): s is VolumeState {
  return (VOLUME_STATES as readonly string[]).includes(s);
}

/** Operations a caller may ask for in this state (failure edges are the manager's own). */
export function allowedOperations(state: VolumeState): Operation[] {
  return (Object.keys(TRANSITIONS[state]) as Operation[]).filter((o) => !o.endsWith('-failed'));
}

/** The next state, or an ILLEGAL_STATE error naming the state and what is allowed there. */
export function transition(state: string, op: Operation, subject?: string): VolumeState {
  if (!isVolumeState(state)) throw new BlockgateError('INTERNAL', `unknown volume state '${state}'`);
  const next = TRANSITIONS[state][op];
  if (next === undefined) {
    const allowed = allowedOperations(state);
    throw new BlockgateError(
      'ILLEGAL_STATE',
      `cannot ${op} ${subject ? `volume '${subject}' ` : ''}in state '${state}'; allowed in '${state}': ${allowed.join(', ') || 'nothing'}`,
      { state, operation: op, allowed, ...(subject ? { volume: subject } : {}) },
    );
  }
  return next;
}
