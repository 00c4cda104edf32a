/**
 * A server-sent-events subscriber running in the background: every event is
 * kept in `seen` as it arrives; tests wait for what they expect with waitFor.
 */
export class SseCollector {
  readonly seen: { id: string | null; event: string | null; data: any }[] = [];
  private readonly ac = new AbortController();
  private done: Promise<void> = Promise.resolve();

  static async open(url: string, token: string): Promise<SseCollector> {
    const c = new SseCollector();
    const res = await fetch(url, { headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream' }, signal: c.ac.signal });
    if (res.status !== 200 || !res.body) throw new Error(`${url} answered ${res.status}`);
    c.done = c.read(res.body.getReader());
    return c;
  }

  private async read(reader: ReadableStreamDefaultReader<Uint8Array>): Promise<void> {
    let buf = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buf += Buffer.from(value).toString();
        let i: number;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i).split('\n');
          buf = buf.slice(i + 2);
          const field = (k: string): string | null => block.find((l) => l.startsWith(`${k}: `))?.slice(k.length + 2) ?? null;
          const data = field('data');
          if (data !== null) this.seen.push({ id: field('id'), event: field('event'), data: JSON.parse(data) });
        }
      }
    } catch {
      /* aborted by close() */
    }
  }

  async close(): Promise<void> {
    this.ac.abort();
    await this.done;
  }
}
