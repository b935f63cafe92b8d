"use strict";
// Finds the extension in the per-platform package npm installed, and loads it into a
// better-sqlite3 or node:sqlite database.
const path = require("node:path");

const SUPPORTED = ["linux-x64", "linux-arm64"];

function getLoadablePath() {
  const platform = `${process.platform}-${process.arch}`;
  if (!SUPPORTED.includes(platform)) {
    throw new Error(
      `sqlite-backup-ext: no build for ${platform} (there are builds for ${SUPPORTED.join(", ")} with glibc >= 2.17); ` +
        "build the extension from source (cargo build --release) and load it by path",
    );
  }
  const pkg = `sqlite-backup-ext-${platform}`;
  let dir;
  try {
    dir = path.dirname(require.resolve(`${pkg}/package.json`));
  } catch (e) {
    throw new Error(
      `sqlite-backup-ext: the optional package ${pkg} is not installed ` +
        "(installed with --no-optional, or on a musl system such as Alpine, which has no build yet): " +
        `npm install ${pkg}`,
    );
  }
  return path.join(dir, "sqlite_backup.so");
}

function load(db) {
  if (!db || typeof db.loadExtension !== "function") {
    throw new TypeError(
      "sqlite-backup-ext: load(db) takes a better-sqlite3 Database or a node:sqlite DatabaseSync",
    );
  }
  try {
    db.loadExtension(getLoadablePath());
  } catch (e) {
    // node:sqlite refuses unless the database was opened to allow extensions.
    if (/allowExtension|not allowed|not authorized/i.test(String(e && e.message))) {
      throw new Error(
        "sqlite-backup-ext: this database does not allow extensions; with node:sqlite open it as " +
          `new DatabaseSync(path, { allowExtension: true }) (${e.message})`,
      );
    }
    throw e;
  }
}

module.exports = { load, getLoadablePath };
