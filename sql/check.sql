-- Test the newest backup, as a daily cron job should: it fails (non-zero exit) on any problem.
SELECT name, size, modified FROM backup_list('backups') LIMIT 5;
SELECT verify_backup(url) ->> '$.integrity' FROM backup_list('backups', '{"match": "demo-*.gz"}') LIMIT 1;
-- Restore it beside the live database to look inside (never over a running application's file).
SELECT restore_backup(url, 'backups/restored-check.db', '{"overwrite": true}') ->> '$.ok'
  FROM backup_list('backups', '{"match": "demo-*.gz"}') LIMIT 1;
