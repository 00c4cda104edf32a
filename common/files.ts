import fs from 'node:fs';
import path from 'node:path';

/**
 * Writes `text` so that FILE is either the old or the whole new document,
 * never a torn one: a temporary file beside it, fsync'ed, renamed over it,
 * then the directory fsync'ed so the rename itself survives power loss.
 */
export async function writeAtomically(file: string, text: string, mode = 0o600): Promise<void> {
  const dir = path.dirname(path.resolve(file));
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.tmp`);
  const h = await fs.promises.open(tmp, 'w', mode);
  try {
    await h.writeFile(text);
    await h.sync();
  } finally {
    await h.close();
  }
  try {
    await fs.promises.rename(tmp, file);
  } catch (e) {
    await fs.promises.rm(tmp, { force: true });
    throw e;
  }
  const d = await fs.promises.open(dir, 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}
