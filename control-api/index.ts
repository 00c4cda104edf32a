export { buildApi, BODY_LIMIT } from './app.js';
export type { ApiOptions } from './app.js';
export { API_ERRORS, type ApiErrorCode } from './errors.js';
export { RESOURCES, type ResourcePlugin, type RouteContext } from './routes/index.js';
