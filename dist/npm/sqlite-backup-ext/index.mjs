import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const cjs = require("./index.cjs");

export const load = cjs.load;
export const getLoadablePath = cjs.getLoadablePath;
export default { load, getLoadablePath };
