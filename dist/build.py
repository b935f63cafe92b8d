#!/usr/bin/env python3
"""`make dist`: portable Linux builds and everything users install, under dist/out/.

For each architecture: one `cargo zigbuild --release` against glibc 2.17 (manylinux2014), then
from that one .so a release tarball, a Python wheel and an npm platform package. Plus the npm
main package, sqlpkg.json and checksums.txt. The version comes from Cargo.toml alone.

Needs cargo-zigbuild and ziglang on PATH (`make dist-tools` puts them into .tools/venv) and
npm for `npm pack`. Only the standard library: the wheel is a zip written here, so building it
needs no network and no build backend.
"""

import argparse
import base64
import glob
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tomllib
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIST = os.path.join(ROOT, "dist")
# SQLite derives the entry point from the file name: sqlite3_sqlitebackup_init.
SO = "sqlite_backup.so"
GLIBC = "2.17"
# arch in file names (uname -m) -> (Rust target, npm cpu, sqlpkg arch)
ARCHES = {
    "x86_64": ("x86_64-unknown-linux-gnu", "x64", "amd64"),
    "aarch64": ("aarch64-unknown-linux-gnu", "arm64", "arm64"),
}
# Fixed zip/tar times: the same sources give byte-identical artefacts.
EPOCH = (1980, 1, 1, 0, 0, 0)
MTIME = 315532800


def version():
    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        return tomllib.load(f)["package"]["version"]


def run(cmd, **kw):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def clang_includes():
    """bindgen (sqlite3ext-sys) under zig finds no compiler headers (stdarg.h) of its own:
    point it at libclang's."""
    found = sorted(glob.glob("/usr/lib/llvm-*/lib/clang/*/include/stdarg.h"))
    return os.path.dirname(found[-1]) if found else None


def build(arch):
    """One release build per architecture; returns the path of the .so."""
    target = ARCHES[arch][0]
    env = dict(os.environ)
    inc = clang_includes()
    if inc and "BINDGEN_EXTRA_CLANG_ARGS" not in env:
        env["BINDGEN_EXTRA_CLANG_ARGS"] = f"-I{inc}"
    run(["cargo", "zigbuild", "--release", "--lib", "--target", f"{target}.{GLIBC}"],
        cwd=ROOT, env=env)
    so = os.path.join(ROOT, "target", target, "release", "libsqlite_backup.so")
    if not os.path.isfile(so):
        sys.exit(f"dist: cargo zigbuild made no {so}")
    return so


def tarball(out, ver, arch, so):
    name = f"sqlite-backup-{ver}-loadable-linux-{arch}.tar.gz"
    with tarfile.open(os.path.join(out, name), "w:gz", format=tarfile.GNU_FORMAT) as tar:
        info = tar.gettarinfo(so, arcname=SO)
        info.mtime, info.uid, info.gid, info.uname, info.gname = MTIME, 0, 0, "", ""
        info.mode = 0o755
        with open(so, "rb") as f:
            tar.addfile(info, f)
    return name


def _record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def wheel(out, ver, arch, so):
    tag = f"py3-none-manylinux_{GLIBC.replace('.', '_')}_{arch}"
    name = f"sqlite_backup_ext-{ver}-{tag}.whl"
    info = f"sqlite_backup_ext-{ver}.dist-info"
    pkg = os.path.join(DIST, "python", "sqlite_backup_ext")
    files = []
    for py in ("__init__.py", "sqlite_utils_plugin.py"):
        with open(os.path.join(pkg, py), encoding="utf-8") as f:
            files.append((f"sqlite_backup_ext/{py}", f.read().replace("@VERSION@", ver).encode(), 0o644))
    with open(so, "rb") as f:
        files.append((f"sqlite_backup_ext/{SO}", f.read(), 0o755))
    with open(os.path.join(DIST, "python", "README.md"), encoding="utf-8") as f:
        readme = f.read()
    metadata = (
        "Metadata-Version: 2.1\n"
        "Name: sqlite-backup-ext\n"
        f"Version: {ver}\n"
        "Summary: SQLite loadable extension: compressed, verified backups to files and S3 from SQL\n"
        "License: MIT OR Apache-2.0\n"
        "Requires-Python: >=3.8\n"
        "Description-Content-Type: text/markdown\n"
        "\n" + readme
    )
    wheel_meta = (
        "Wheel-Version: 1.0\n"
        "Generator: sqlite-backup dist/build.py\n"
        "Root-Is-Purelib: false\n"
        f"Tag: {tag}\n"
    )
    # sqlite-utils loads plugins from this entry point group (pluggy).
    entry_points = "[sqlite_utils]\nsqlite_backup_ext = sqlite_backup_ext.sqlite_utils_plugin\n"
    files += [
        (f"{info}/METADATA", metadata.encode(), 0o644),
        (f"{info}/WHEEL", wheel_meta.encode(), 0o644),
        (f"{info}/entry_points.txt", entry_points.encode(), 0o644),
    ]
    record = "".join(_record_line(p, d) + "\n" for p, d, _ in files) + f"{info}/RECORD,,\n"
    files.append((f"{info}/RECORD", record.encode(), 0o644))
    with zipfile.ZipFile(os.path.join(out, name), "w", zipfile.ZIP_DEFLATED) as z:
        for path, data, mode in files:
            zi = zipfile.ZipInfo(path, EPOCH)
            zi.external_attr = (stat.S_IFREG | mode) << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, data)
    return name


def _npm_package(out, src_dir, name, subst, extra):
    """Copies a template package with @VERSION@/@ARCH@ filled in, adds files, `npm pack`s it."""
    stage = os.path.join(out, "npm", name)
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage)
    for entry in sorted(os.listdir(src_dir)):
        with open(os.path.join(src_dir, entry), encoding="utf-8") as f:
            text = f.read()
        for key, value in subst.items():
            text = text.replace(key, value)
        with open(os.path.join(stage, entry), "w", encoding="utf-8") as f:
            f.write(text)
    for dest, src in extra.items():
        shutil.copyfile(src, os.path.join(stage, dest))
        os.chmod(os.path.join(stage, dest), 0o755 if dest.endswith(".so") else 0o644)
    res = subprocess.run(
        ["npm", "pack", "--silent", "--pack-destination", out],
        cwd=stage, check=True, capture_output=True, text=True,
    )
    return res.stdout.strip().splitlines()[-1]


def sqlpkg(out, ver, tarballs):
    # `assets.path` is where the tarballs are served from: the release's download URL
    # (SQLITE_BACKUP_RELEASE_URL), or the folder holding this file when unset.
    spec = {
        "owner": "sqlite-backup",
        "name": "sqlite-backup",
        "version": ver,
        "license": "MIT OR Apache-2.0",
        "description": "Compressed, verified backups to files and S3 from SQL",
        "keywords": ["backup", "s3", "gzip", "zstd"],
        "symbols": [
            "backup_to_file", "backup_to_s3", "verify_backup", "restore_backup",
            "backup_list", "backup_prune", "backup_version", "backup_debug",
        ],
        "assets": {
            "path": os.environ.get("SQLITE_BACKUP_RELEASE_URL", "."),
            "files": {f"linux-{ARCHES[a][2]}": t for a, t in tarballs.items()},
        },
    }
    with open(os.path.join(out, "sqlpkg.json"), "w", encoding="utf-8") as f:
        json.dump(spec, f, indent=2)
        f.write("\n")
    return "sqlpkg.json"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", action="append", choices=sorted(ARCHES),
                    help="build only these (default: all)")
    ap.add_argument("--out", default=os.path.join(DIST, "out"))
    args = ap.parse_args()
    arches = args.arch or list(ARCHES)
    ver = version()
    out = os.path.abspath(args.out)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)

    made, tarballs = [], {}
    readme = os.path.join(DIST, "npm", "README.md")
    for arch in arches:
        so = build(arch)
        # The build each artefact was made from, for the tests (objdump, CLI, qemu).
        os.makedirs(os.path.join(out, "build", arch))
        shutil.copyfile(so, os.path.join(out, "build", arch, SO))
        tarballs[arch] = tarball(out, ver, arch, so)
        made.append(tarballs[arch])
        made.append(wheel(out, ver, arch, so))
        cpu = ARCHES[arch][1]
        made.append(_npm_package(
            out, os.path.join(DIST, "npm", "platform"), f"sqlite-backup-ext-linux-{cpu}",
            {"@VERSION@": ver, "@ARCH@": cpu}, {SO: so, "README.md": readme},
        ))
    made.append(_npm_package(
        out, os.path.join(DIST, "npm", "sqlite-backup-ext"), "sqlite-backup-ext",
        {"@VERSION@": ver}, {"README.md": readme},
    ))
    made.append(sqlpkg(out, ver, tarballs))
    with open(os.path.join(out, "checksums.txt"), "w", encoding="utf-8") as f:
        for name in sorted(made):
            with open(os.path.join(out, name), "rb") as a:
                f.write(f"{hashlib.sha256(a.read()).hexdigest()}  {name}\n")
    print("dist: " + ", ".join(sorted(made)) + f", checksums.txt in {out}")


if __name__ == "__main__":
    main()
