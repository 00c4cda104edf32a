export { ScsiCommandSet } from './device.js';
export { encodeSense, senseForError, STATUS, KEY, SENSE } from './sense.js';
export type { Nexus, ScsiCommand, ScsiContext, ScsiDevice, ScsiResponse, ReservationStore, TaskAttribute } from './contract.js';
