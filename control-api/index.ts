export { buildApi } from './app.js';
export type { ApiOptions } from './app.js';
export { schemas } from './schemas.js';
