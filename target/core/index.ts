export type {
  AllocationRun,
  AllocationState,
  CompareAndWriteResult,
  Frontend,
  HostEndpoints,
  NamespaceChange,
  Protocol,
  UnitAddress,
  UnitCapabilities,
  UnitIO,
  ZeroRequest,
} from './contract.js';
export { openUnit, MAX_TRANSFER, PREFERRED_BLOCK } from './unit-io.js';
export { IoStats, StatsRegistry, OP, OP_NAMES, LATENCY_BUCKETS } from './stats.js';
export { ChangeMap, changeMaps } from './changes.js';
export { IoBudget, DEFAULT_IO_BUDGET, BUDGET_FLOOR, type BudgetHolder } from './budget.js';
export { ReplyBatch } from './reply-batch.js';
export { LARGE_MIN, SMALL_MAX, alignedCopy, largeBuffer, releaseLarge, releaseSmall, releaseWhenWritten, dataBuffer, smallBuffer } from './buffers.js';
export { readIntoSharedBuffer } from './socket-reads.js';
export { IdlePoll, DEFAULT_IDLE_POLL_US, type PolledSession } from './idle-poll.js';
