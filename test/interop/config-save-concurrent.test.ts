import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { startServer } from '../helpers/server.js';

// The saved configuration is written once for a burst of concurrent requests
// (group commit), yet every reply still finds its own change in the file.

t.test('concurrent control requests share saves; each reply finds its change saved', async (t) => {
  const s = await startServer(t, { demo: false });
  await s.call('POST', '/v1/arrays', { name: 'a', size: '256M' });
  await s.call('POST', '/v1/farms', { name: 'f' });
  const file = path.join(s.dataDir, 'blockgate.config.json');
  const missing: string[] = [];
  await Promise.all(
    Array.from({ length: 24 }, async (_, i) => {
      const name = `c${i}`;
      await s.call('POST', '/v1/volumes', { name, size: '4M', farm: 'f' });
      const doc = JSON.parse(fs.readFileSync(file, 'utf8')) as { volumes: { name: string }[] };
      if (!doc.volumes.some((v) => v.name === name)) missing.push(name);
    }),
  );
  t.same(missing, [], 'every reply came after a save that holds its volume');
  const doc = JSON.parse(fs.readFileSync(file, 'utf8')) as { volumes: { name: string }[] };
  t.equal(doc.volumes.length, 24);
});
