import t from 'tap';
import { IoBudget, type BudgetHolder } from '../../target/core/index.js';

// The budget's rules on their own (the sessions that use it are tested against a
// real server in test/fault/io-budget.test.ts).

const MiB = 1024 * 1024;

class Session implements BudgetHolder {
  budgetCharged = 0;
  woken = 0;
  budgetResume(): void {
    this.woken++;
  }
}

t.test('admission: limit, floor reserve, fair share, wake-up', async (t) => {
  const b = new IoBudget(64 * MiB);
  const [a, c, d] = [new Session(), new Session(), new Session()];
  t.ok(b.admits(a, 32 * MiB), 'a session holding nothing gets a large request while there is room');
  b.charge(a, 32 * MiB);
  t.ok(b.admits(a, 32 * MiB), 'alone, it may use the whole budget');
  b.charge(a, 64 * MiB);
  t.notOk(b.admits(c, 32 * MiB), 'over the limit: a large request waits');
  t.ok(b.admits(c, MiB), 'a small request of a session holding nothing comes from the reserve');
  b.charge(c, MiB);
  t.notOk(b.admits(c, MiB), 'only one at a time');
  b.wait(c, MiB);
  b.wait(d, 32 * MiB);
  t.equal(b.waiting, 2);
  t.equal(b.refusals, 2);
  b.charge(c, 0);
  t.equal(d.woken, 1, 'a holder letting go wakes the waiters');
  t.equal(b.waiting, 0, 'woken waiters leave the queue (they ask again)');
  b.charge(a, 40 * MiB);
  t.ok(b.admits(d, 16 * MiB), 'room again');
  b.charge(d, 16 * MiB);
  // Two holders, one waiter: a's share is 64/3 MiB, it already holds more.
  b.charge(a, 20 * MiB);
  b.wait(c, 32 * MiB);
  t.notOk(b.admits(a, 4 * MiB), 'a holder over its share waits while others do');
  b.leave(a);
  b.leave(c);
  b.leave(d);
  t.equal(b.used, 0, 'everything returned');
  t.throws(() => new IoBudget(0));
});

t.test('a request larger than the budget runs once it has the budget to itself', async (t) => {
  const b = new IoBudget(32 * MiB);
  const a = new Session();
  t.ok(b.admits(a, 48 * MiB));
  b.charge(a, 48 * MiB);
  t.equal(b.used, 48 * MiB);
  b.leave(a);
});
