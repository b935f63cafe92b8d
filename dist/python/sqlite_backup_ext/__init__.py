"""sqlite-backup as a Python package: the loadable extension and a loader.

    import sqlite3, sqlite_backup_ext
    conn = sqlite3.connect("app.db")
    sqlite_backup_ext.load(conn)
    conn.execute("SELECT backup_to_file('backups/app-%Y%m%d.db.gz')")

load() works with the stdlib sqlite3, apsw and sqlean connections (anything with
load_extension/enable_load_extension).
"""

import os

__all__ = ["load", "loadable_path", "LoadError", "__version__"]

__version__ = "@VERSION@"


class LoadError(RuntimeError):
    """The connection cannot load SQLite extensions."""


def loadable_path():
    """Path of the extension (sqlite_backup.so), for load_extension() or `.load` in the CLI."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "sqlite_backup.so")


_NO_LOADING = (
    "this Python's SQLite module cannot load extensions ({what}): pyenv and python.org "
    "builds on Linux are compiled without it. Use the system Python (for example Debian/Ubuntu "
    "/usr/bin/python3), rebuild with PYTHON_CONFIGURE_OPTS=--enable-loadable-sqlite-extensions, "
    "or `pip install apsw` (or sqlean.py) and pass its connection to load()"
)


def load(conn):
    """Load sqlite-backup into `conn`.

    Extension loading is enabled only for this call: a connection that had it off has it off
    again afterwards, one that had it on keeps it on.
    """
    enable = getattr(conn, "enable_load_extension", None)
    load_ext = getattr(conn, "load_extension", None)
    if enable is None or load_ext is None:
        raise LoadError(_NO_LOADING.format(what=type(conn).__module__ + "." + type(conn).__name__
                                           + " has no enable_load_extension"))
    path = loadable_path()
    # There is no portable way to read the setting, so try first: a load that is refused
    # because loading is off changes nothing, and tells us it was off.
    try:
        load_ext(path)
        return
    except Exception as e:  # sqlite3.OperationalError, apsw.ExtensionLoadingError, ...
        if "not authorized" not in str(e):
            raise
    enable(True)
    try:
        load_ext(path)
    finally:
        enable(False)
