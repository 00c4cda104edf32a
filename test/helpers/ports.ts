import net from 'node:net';

/**
 * A TCP port free on 127.0.0.1 right now, for settings that must name a real
 * port (a host's own listener is recorded as it listens, so ':0' is refused).
 */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen({ host: '127.0.0.1', port: 0 }, () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}
