import { EventEmitter } from 'node:events';
import type { Db } from './db.js';

export interface EventRecord {
  id: number;
  at: string;
  type: string;
  subject: string | null;
  data: Record<string, unknown>;
}

interface EventRow {
  id: number;
  at: string;
  type: string;
  subject: string | null;
  data: string;
}

const toRecord = (r: EventRow): EventRecord => ({ id: r.id, at: r.at, type: r.type, subject: r.subject, data: JSON.parse(r.data) as Record<string, unknown> });

/**
 * The persisted event log (job state, namespace, host and VM changes). Rows
 * are written inside the caller's transaction when there is one, so an event
 * exists exactly when the change it reports does; live subscribers hear of it
 * after commit.
 */
export class EventLog {
  private readonly emitter = new EventEmitter();
  private pending: EventRecord[] = [];

  constructor(private readonly db: Db) {
    // One SSE stream per admin client; more than the default 10 is normal.
    this.emitter.setMaxListeners(0);
  }

  emit(type: string, subject: string | null, data: Record<string, unknown> = {}): EventRecord {
    const at = new Date().toISOString();
    const id = Number(this.db.prepare('INSERT INTO events (at, type, subject, data) VALUES (?, ?, ?, ?)').run(at, type, subject, JSON.stringify(data)).lastInsertRowid);
    const rec: EventRecord = { id, at, type, subject, data };
    if (this.db.inTransaction) {
      // Delivered after the surrounding transaction commits (see flush()).
      this.pending.push(rec);
      queueMicrotask(() => this.flush());
    } else {
      this.emitter.emit('event', rec);
    }
    return rec;
  }

  private flush(): void {
    if (this.db.inTransaction) {
      queueMicrotask(() => this.flush());
      return;
    }
    const out = this.pending.splice(0);
    // A rolled-back transaction took its rows with it: deliver only what persisted.
    const still = this.db.prepare('SELECT id FROM events WHERE id = ?');
    for (const e of out) if (still.get(e.id)) this.emitter.emit('event', e);
  }

  since(id: number, limit = 1000): EventRecord[] {
    return (this.db.prepare('SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?').all(id, limit) as EventRow[]).map(toRecord);
  }

  subscribe(fn: (e: EventRecord) => void): () => void {
    this.emitter.on('event', fn);
    return () => this.emitter.off('event', fn);
  }
}
