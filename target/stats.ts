// Moved to target/core/stats.ts; kept so existing imports keep working.
export * from './core/stats.js';
