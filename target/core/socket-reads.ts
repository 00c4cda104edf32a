/**
 * Socket reads into one process-wide buffer instead of a fresh 64 KiB
 * allocation per read (Node's default): at 1 GB/s of 1 MiB writes those
 * chunks were a third of the main thread's busy time in GC
 * (docs/bench/findings.md, session 3).
 *
 * Node offers this (`onread`) only to sockets it creates for connect(); an
 * accepted socket gets it by the same internal switches its constructor
 * sets, found by name on a throwaway socket. When they are not there (a
 * future Node), sessions keep Node's own chunks.
 *
 * One buffer serves every socket: libuv fills it and calls back before it
 * reads any other socket, and the callback copies whatever it keeps. So a
 * caller's `onChunk` must not hold on to the buffer past its return.
 */
import { readSync } from 'node:fs';
import net from 'node:net';

/** Large enough that a 1 MiB write arrives in a few reads, not sixteen. */
const SHARED_SIZE = 1024 * 1024;

interface Switches {
  buffer: symbol;
  callback: symbol;
  /** Asked after each read for the buffer the next read goes into (absent in some Node: then always the shared one). */
  next: symbol | undefined;
}

let switches: Switches | null | undefined;
let shared: Buffer | null = null;

function findSwitches(): Switches | null {
  try {
    // `onread` is typed for connect() options only; the constructor is where Node reads it.
    const probe = new net.Socket({ onread: { buffer: Buffer.alloc(8), callback: () => true } } as net.SocketConstructorOpts);
    const syms = Object.getOwnPropertySymbols(probe);
    const buffer = syms.find((s) => s.description === 'kBuffer');
    const callback = syms.find((s) => s.description === 'kBufferCb');
    const next = syms.find((s) => s.description === 'kBufferGen');
    probe.destroy();
    return buffer && callback ? { buffer, callback, next } : null;
  } catch {
    return null;
  }
}

interface StreamHandle {
  useUserBuffer?: (buf: Uint8Array) => void;
}

/**
 * From the next read on, `onChunk(buf, n)` gets the socket's bytes in the
 * shared buffer (its first n bytes) and no 'data' events are emitted.
 * pause()/resume() keep working. Returns false (nothing changed) when the
 * socket cannot do this: TLS, no handle, or a Node without the switches.
 *
 * `direct`, asked after every read, may name a buffer of the caller's for
 * the next read instead (the rest of a large payload, which the kernel then
 * copies straight into place): `onChunk` gets that buffer, and the read is
 * never longer than it.
 */
export function readIntoSharedBuffer(socket: net.Socket, onChunk: (buf: Buffer, n: number) => void, direct?: () => Buffer | null): boolean {
  if (switches === undefined) switches = findSwitches();
  const handle = (socket as unknown as { _handle?: StreamHandle | null })._handle;
  if (!switches || !handle || typeof handle.useUserBuffer !== 'function' || 'encrypted' in socket) return false;
  shared ??= Buffer.allocUnsafeSlow(SHARED_SIZE);
  const s = socket as unknown as Record<symbol, unknown>;
  s[switches.buffer] = shared;
  s[switches.callback] = (n: number, buf: Buffer): boolean => {
    onChunk(buf, n);
    // Flow control pauses through socket.pause(), which stops the handle itself.
    return true;
  };
  const sharedBuf = shared;
  if (direct && switches.next) s[switches.next] = (): Buffer => direct() ?? sharedBuf;
  handle.useUserBuffer(shared);
  return true;
}

/**
 * One read of a socket set up by readIntoSharedBuffer, made now and without
 * waiting, the way libuv's own read would be: into the buffer the next read
 * goes to, handed to the same callback, the buffer after it asked for as
 * Node asks. Returns the bytes read, 0 when there were none yet, or -1 when
 * this socket cannot be read here (end of stream, an error, a socket that
 * does not read into the shared buffer): libuv's poll then finds the same
 * condition and reports it as usual.
 */
export function readNow(socket: net.Socket): number {
  const handle = (socket as unknown as { _handle?: (StreamHandle & { fd?: number }) | null })._handle;
  const fd = handle?.fd;
  if (!switches || !handle || typeof fd !== 'number' || fd < 0 || typeof handle.useUserBuffer !== 'function') return -1;
  const s = socket as unknown as Record<symbol, unknown>;
  const buf = s[switches.buffer];
  const onChunk = s[switches.callback];
  if (!(buf instanceof Uint8Array) || typeof onChunk !== 'function') return -1;
  let n: number;
  try {
    n = readSync(fd, buf, 0, buf.byteLength, null);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EAGAIN' ? 0 : -1;
  }
  if (n <= 0) return -1;
  // What Node does after a read: the session's timeout restarts, then the callback, then the next buffer.
  (socket as unknown as { _unrefTimer?: () => void })._unrefTimer?.();
  (onChunk as (n: number, b: Uint8Array) => boolean)(n, buf);
  const gen = switches.next ? s[switches.next] : undefined;
  if (typeof gen === 'function' && !socket.destroyed) {
    const next = (gen as () => unknown)();
    if (next instanceof Uint8Array && next !== buf) {
      s[switches.buffer] = next;
      handle.useUserBuffer(next);
    }
  }
  return n;
}
