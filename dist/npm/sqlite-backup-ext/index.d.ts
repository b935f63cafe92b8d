/** A database that can load extensions: better-sqlite3's Database or node:sqlite's DatabaseSync. */
export interface ExtensionLoader {
  loadExtension(path: string, ...rest: any[]): unknown;
}

/** Absolute path of sqlite_backup.so for this platform; throws when there is no build for it. */
export function getLoadablePath(): string;

/**
 * Loads sqlite-backup into `db` (better-sqlite3, or node:sqlite opened with
 * `{ allowExtension: true }`).
 */
export function load(db: ExtensionLoader): void;

declare const _default: { load: typeof load; getLoadablePath: typeof getLoadablePath };
export default _default;
