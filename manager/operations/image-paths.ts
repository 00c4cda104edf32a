import fs from 'node:fs';
import path from 'node:path';
import { badRequest } from '../../common/errors.js';
import { OWN_FILES } from '../data-dir.js';

const under = (p: string, root: string): boolean => p === root || p.startsWith(root.endsWith(path.sep) ? root : root + path.sep);

/**
 * Where an image file may come from: DATA/images, or a directory the admin
 * named (`serve --image-root`). Never the appliance's own files (database,
 * token, saved configuration, lock), never an array or its map, this
 * appliance's or another's (an `.id` identity beside it, or the same inode
 * under another name), and no way out through `..` or a symbolic link: the
 * file's real path must lie under a root's real path. Returns the real path.
 * Control path only.
 */
/** Where image files may live: the data directory's images/ and the admin's extra roots. */
export interface ImageRootsOwner {
  readonly dataDir: string;
  readonly dataDirReal: string;
  readonly imageRoots: readonly string[];
  listArrays(): { name: string; path: string }[];
}

export async function resolveImagePath(m: ImageRootsOwner, file: string): Promise<{ path: string; size: number }> {
  const dataDir = m.dataDirReal;
  const imagesDir = path.join(dataDir, 'images');
  const roots = [imagesDir];
  for (const r of m.imageRoots) {
    const real = await fs.promises.realpath(r).catch(() => null);
    if (real) roots.push(real);
  }
  const where = `an image must be a file under ${roots.join(' or ')}`;
  // Relative paths are relative to the data directory, as in "images/debian.img".
  const asked = path.resolve(m.dataDir, file);
  const askedLexical = path.resolve(dataDir, file);
  if (!roots.some((r) => under(asked, r) || under(askedLexical, r)) && !m.imageRoots.some((r) => under(asked, path.resolve(r)))) {
    throw badRequest(`image path '${file}' is outside the image directories: ${where}`, { path: file, roots });
  }
  const real = await fs.promises.realpath(asked).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') throw badRequest(`image file ${asked} does not exist (${where})`, { path: file });
    throw badRequest(`image file ${asked} cannot be resolved: ${e.code ?? e.message}`, { path: file });
  });
  const st = await fs.promises.stat(real);
  await refuseAppliancePart(m, real, st, file);
  if (!roots.some((r) => under(real, r))) {
    throw badRequest(`image path '${file}' leads to ${real}, outside the image directories (through a link or '..'): ${where}`, { path: file, roots });
  }
  if (!st.isFile()) throw badRequest(`image file ${real} is not a regular file`, { path: file });
  if (st.size === 0) throw badRequest(`image file ${real} is empty`, { path: file });
  return { path: real, size: st.size };
}

async function refuseAppliancePart(m: ImageRootsOwner, real: string, st: fs.Stats, asked: string): Promise<void> {
  const exists = (p: string): Promise<boolean> => fs.promises.access(p).then(() => true, () => false);
  // (An image has a `.alloc` beside it once copied from: the engine reads it like an array. Only arrays have an `.id`.)
  if ((await exists(`${real}.id`)) || real.endsWith('.img.id') || real.endsWith('.img.alloc')) {
    throw badRequest(`image path '${asked}' is an array file (or its map) of an appliance (${real}); an array is never registered as an image`, { path: asked });
  }
  if (under(real, m.dataDirReal) && !under(real, path.join(m.dataDirReal, 'images'))) {
    throw badRequest(`image path '${asked}' is one of the data directory's own files (${real}); images live under ${path.join(m.dataDirReal, 'images')}`, { path: asked });
  }
  // The same inode under another name (a hard link) is the same file.
  const same = async (p: string): Promise<boolean> => {
    const o = await fs.promises.stat(p).catch(() => null);
    return o !== null && o.dev === st.dev && o.ino === st.ino;
  };
  for (const a of m.listArrays()) {
    if ((await same(a.path)) || (await same(`${a.path}.alloc`))) {
      throw badRequest(`image path '${asked}' is array '${a.name}' (${a.path}) under another name; an array is never registered as an image`, { path: asked, array: a.name });
    }
  }
  for (const f of OWN_FILES) {
    if (await same(path.join(m.dataDirReal, f))) {
      throw badRequest(`image path '${asked}' is the appliance's own ${f} under another name; images live under ${path.join(m.dataDirReal, 'images')}`, { path: asked });
    }
  }
}
