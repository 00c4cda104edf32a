import { z } from 'zod';
import { VOLUME_STATES } from './state.js';

/**
 * The storage admin's words as zod types, shared by the saved configuration,
 * the views and the control API's requests, so a name or a LUN means the same
 * everywhere it is checked.
 */
export const name = z.string().min(1).max(63);
export const target = z.number().int().min(0).max(255);
export const lun = z.number().int().min(0).max(16383);
export const shareMode = z.enum(['exclusive', 'shared']);
export const accessMode = z.enum(['exclusive', 'shared', 'read-only']);
export const cachePolicy = z.enum(['none', 'write-through', 'write-back']);
export const provisioning = z.enum(['thin', 'thick']);
export const qualityClass = z.string().min(1).max(32);
export const protocol = z.string().min(1).max(16);
export const when = z.string().min(1).max(64);
export const filePath = z.string().min(1).max(4096);
export const volumeState = z.enum(VOLUME_STATES);
