// A backup runs synchronously in the thread that calls it, like every SQLite call: in Node
// (better-sqlite3, node:sqlite) that thread is the event loop, which stops serving until the
// backup ends. Run it in a worker thread with a connection of its own instead.
//
//   node worker-backup.mjs <extension> <database> <pattern> [--inline]
//
// prints {"mode", "elapsed_ms", "longest_gap_ms", "destination"}: the longest gap between the
// ticks of a 10 ms timer that stands for the application's event loop.
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';

const here = fileURLToPath(import.meta.url);

// One connection per thread: a better-sqlite3 connection cannot be shared with a worker.
function backup({ extension, database, pattern, options }) {
  const db = new Database(database);
  try {
    db.loadExtension(extension);
    const text = db
      .prepare('SELECT backup_to_file(?, ?)')
      .pluck()
      .get(pattern, JSON.stringify(options ?? {}));
    return JSON.parse(text);
  } finally {
    db.close();
  }
}

/** backup_to_file in a worker thread: resolves with its result, rejects with its SQL error. */
export function backupInWorker(job) {
  return new Promise((resolve, reject) => {
    const worker = new Worker(here, { workerData: job });
    worker.once('message', (m) => (m.error ? reject(new Error(m.error)) : resolve(m.result)));
    worker.once('error', reject);
  });
}

if (!isMainThread) {
  try {
    parentPort.postMessage({ result: backup(workerData) });
  } catch (e) {
    parentPort.postMessage({ error: e.message });
  }
} else if (process.argv[1] === here) {
  const [extension, database, pattern, mode] = process.argv.slice(2);
  const inline = mode === '--inline';
  let last = performance.now();
  let longest = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    longest = Math.max(longest, now - last);
    last = now;
  }, 10);
  const started = performance.now();
  const job = { extension, database, pattern, options: { level: 9 } };
  const result = inline ? backup(job) : await backupInWorker(job);
  const elapsed = performance.now() - started;
  // One more tick, so a gap that ends with an inline backup is counted.
  await new Promise((resolve) => setTimeout(resolve, 30));
  clearInterval(timer);
  console.log(
    JSON.stringify({
      mode: inline ? 'inline' : 'worker',
      elapsed_ms: Math.round(elapsed),
      longest_gap_ms: Math.round(longest),
      destination: result.destination,
    }),
  );
}
