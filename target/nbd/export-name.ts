/** Largest LUN accepted in an export name (SAM's flat space addressing limit). */
export const MAX_LUN = 16383;

/**
 * Export names address units in the host's own namespace: "" is the boot unit
 * 0/0, "T/L" is target T, lun L. Anything else names nothing.
 */
export function parseExportName(name: string): { target: number; lun: number } | null {
  if (name === '') return { target: 0, lun: 0 };
  const m = /^\/?(\d{1,3})\/(\d{1,5})$/.exec(name);
  if (!m) return null;
  const target = Number(m[1]);
  const lun = Number(m[2]);
  if (target > 255 || lun > MAX_LUN) return null;
  return { target, lun };
}
