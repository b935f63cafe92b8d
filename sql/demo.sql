-- make demo: back up the sample database to ./backups/ and check the backup.
-- Run as: sqlite3 -cmd ".load dist/release/sqlite_backup" backups/demo.db < sql/demo.sql
.mode list
SELECT backup_version();
-- Compressed, atomic, named by the hour (UTC): backups/demo-YYYYMMDD-HH.db.gz
SELECT backup_to_file('backups/demo-%Y%m%d-%H.db.gz');
-- The same backup as zstd (smaller, faster).
SELECT backup_to_file('backups/demo-%Y%m%d-%H.db.zst');
-- The newest .gz backup: decompress, check it is a database, run PRAGMA integrity_check.
SELECT verify_backup(url) FROM backup_list('backups', '{"match": "demo-*.db.gz"}') LIMIT 1;
