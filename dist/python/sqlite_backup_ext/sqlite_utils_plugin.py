"""sqlite-utils plugin: every connection sqlite-utils opens gets the backup functions.

Registered through the "sqlite_utils" entry point group, which sqlite-utils loads with pluggy;
kept apart from the package so `import sqlite_backup_ext` does not import sqlite_utils.
"""

from sqlite_utils import hookimpl

import sqlite_backup_ext


@hookimpl
def prepare_connection(conn):
    sqlite_backup_ext.load(conn)
