export { ArrayFile } from './array-file.js';
