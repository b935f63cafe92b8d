-- The seed recipe's three rolling schemes, as cron one-liners would run them
-- (sqlite3 /srv/app.db -cmd '.load /usr/local/lib/sqlite_backup' "<one line below>").
-- Each keeps a fixed set of names that the next run overwrites; "keep" also removes names a
-- scheme no longer produces (day 29-31 after a short month), which overwriting never does.

-- 1-day, rolling hourly backup: backups/app-00.db.gz … app-23.db.gz
SELECT backup_to_file('backups/app-%H.db.gz') ->> '$.destination';

-- 1-month, rolling daily backup: app-01 … app-31, nothing older than 31 days
SELECT backup_to_file('backups/app-%d.db.gz', '{"keep": {"keep_within": "31d"}}') ->> '$.destination';

-- 1-month, rolling hourly backup: app-0100 … app-3123
SELECT backup_to_file('backups/app-%d%H.db.gz') ->> '$.destination';

-- Timestamped names with real retention instead of overwriting, skipping unchanged databases:
SELECT backup_to_file('backups/app-%Y%m%dT%H%M%SZ.db.zst',
  '{"if_changed": true, "keep": {"keep_hourly": 24, "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12}}');
