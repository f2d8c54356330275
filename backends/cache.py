"""The one on-disk artifact store of the backends (Triton's ahead-of-time kernels, TVM's libraries
and kernel sources).

An entry is a folder `<root>/<key>/` of artifact files, its key a hash of everything that decides
its bytes (source or graph, options, target, compiler version). Its digests live apart, in
`<root>/<key>.digest.json`, written last through a temporary file and an atomic rename, so a
half-written or foreign entry is never taken for a hit. Every load re-reads the digests and checks
each file against them: a mismatch is rebuilt, saying so. A root, entry or file that is a link, is
not owned by this user or is writable by group or others is never trusted: the process then works
in a private temporary folder (uncached), with a warning."""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .base import BackendError

STATS: Counter = Counter()          # hit / miss / corrupt, for tests and summaries
DIGEST_SUFFIX = ".digest.json"
FORMAT = "portable_moe.cache-entry"


def warn(message: str):
    print(f"portable-moe: warning: {message}", file=sys.stderr)


def make_key(**parts) -> str:
    """A key over everything that decides an entry's bytes (JSON-able values)."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def safe_name(text: str, limit: int = 60) -> str:
    """A file name made from a name a user or a file chose: letters, digits, _ . and - only, never a leading
    dot (so never `..`), clipped; a short hash of the original keeps distinct names apart."""
    clean = re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:limit]
    clean = re.sub(r"^\.", "_", clean)
    return clean if clean == text and clean else f"{clean}-{sha256_bytes(text.encode())[:8]}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_digest(files: dict, meta: dict) -> str:
    """Covers the metadata as the per-file digests cover the artifacts."""
    return sha256_bytes(json.dumps({"files": files, "meta": meta}, sort_keys=True).encode())


def untrusted(path: Path, follow: bool = False) -> str | None:
    """Why a cache path must not be trusted, or None."""
    try:
        st = path.stat() if follow else path.lstat()
    except OSError as e:
        return f"{path} cannot be read ({e.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    if st.st_uid != os.getuid():
        return f"{path} is not owned by this user"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by group or others"
    return None


@dataclass(frozen=True)
class Entry:
    path: Path                      # the entry's folder
    files: dict[str, str]           # artifact file name -> sha256, as verified
    meta: dict                      # what build() returned
    hit: bool

    def read(self, name: str) -> bytes:
        """An artifact's bytes, checked against its digest again (they are what gets used)."""
        data = (self.path / name).read_bytes()
        if sha256_bytes(data) != self.files[name]:
            raise BackendError(f"cache file {self.path / name} changed after it was verified; run again")
        return data


class Store:
    """One cache folder. build(folder) writes an entry's files there and returns JSON-able metadata."""

    def __init__(self, root: Path | str, what: str):
        self.root, self.what = Path(root).expanduser(), what
        self.private: Path | None = None

    def usable_root(self) -> Path:
        if self.private is not None:
            return self.private
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            problem = untrusted(self.root, follow=True)
            if problem:
                problem += " (a cache folder must be yours and `chmod go-w`)"
            elif not os.access(self.root, os.W_OK | os.X_OK):
                problem = f"{self.root} is not writable"
        except OSError as e:
            problem = f"{self.root} cannot be created ({e.strerror})"
        return self.root if problem is None else self.go_private(problem)

    def go_private(self, problem: str) -> Path:
        warn(f"{self.what} cache not used: {problem}; working uncached")
        self.private = Path(tempfile.mkdtemp(prefix="portable-moe-uncached-"))
        atexit.register(shutil.rmtree, self.private, True)
        return self.private

    def fetch(self, key: str, build: Callable[[Path], dict]) -> Entry:
        root = self.usable_root()
        entry, problem = self.check(root, key)
        if entry is not None:
            STATS["hit"] += 1
            return entry
        STATS["corrupt" if problem else "miss"] += 1
        if problem:
            warn(f"{self.what} cache entry {key} rebuilt: {problem}")
        try:
            return self.rebuild(root, key, build)
        except OSError as e:
            if root == self.private:
                raise
            return self.rebuild(self.go_private(f"writing into {root} failed ({e.strerror or e})"), key, build)

    def check(self, root: Path, key: str) -> tuple[Entry | None, str | None]:
        """(the entry, None) when its record and every file check out; else (None, what is wrong), and
        (None, None) when there is no entry at all."""
        folder, digest = root / key, root / f"{key}{DIGEST_SUFFIX}"
        if not digest.exists() and not digest.is_symlink():
            return None, None
        problem = untrusted(digest) or untrusted(folder)
        try:
            record = None if problem else json.loads(digest.read_bytes())
            files, meta = (record["files"], record["meta"]) if self.well_formed(record) else (None, None)
        except (OSError, ValueError, RecursionError) as e:
            problem, files = f"{digest} is unreadable ({e})", None
        if problem is None and files is None:
            problem = f"{digest} is not a cache entry record"
        for name, want in (files or {}).items():
            path = folder / name
            problem = problem or untrusted(path)
            if problem is None and sha256_bytes(path.read_bytes()) != want:
                problem = f"{path} does not match its digest"
        return (None, problem) if problem else (Entry(folder, dict(files), meta, True), None)

    @staticmethod
    def well_formed(record) -> bool:
        return (isinstance(record, dict) and record.get("format") == FORMAT and isinstance(record.get("meta"), dict)
                and isinstance(record.get("files"), dict) and record["files"]
                and all(isinstance(n, str) and isinstance(d, str) and n == Path(n).name and n not in ("", ".", "..")
                        for n, d in record["files"].items())
                and record.get("sha256") == record_digest(record["files"], record["meta"]))

    def rebuild(self, root: Path, key: str, build: Callable[[Path], dict]) -> Entry:
        work = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
        try:
            meta = build(work)
            files = {p.name: self.seal(p) for p in sorted(work.iterdir()) if p.is_file() and not p.is_symlink()}
            record = {"format": FORMAT, "files": files, "meta": meta, "sha256": record_digest(files, meta)}
            theirs, _ = self.check(root, key)       # a concurrent writer finished first: keep its entry
            if theirs is not None:
                return Entry(theirs.path, theirs.files, theirs.meta, False)
            folder, digest = root / key, root / f"{key}{DIGEST_SUFFIX}"
            self.remove(digest)
            self.remove(folder)
            os.rename(work, folder)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{key}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, sort_keys=True)
        os.replace(tmp, digest)
        return Entry(folder, files, meta, False)

    @staticmethod
    def seal(path: Path) -> str:
        """Drops group/other write permission (a umask of 002 would leave it) and digests the file."""
        os.chmod(path, path.stat().st_mode & ~(stat.S_IWGRP | stat.S_IWOTH))
        return sha256_bytes(path.read_bytes())

    @staticmethod
    def remove(path: Path):
        """Takes a stale entry or record out of the way (a concurrent writer may already have)."""
        if path.is_dir() and not path.is_symlink():
            trash = path.with_name(f".{path.name}.{os.getpid()}.old")
            try:
                os.rename(path, trash)
            except OSError:
                return
            shutil.rmtree(trash, ignore_errors=True)
        else:
            try:
                path.unlink()
            except FileNotFoundError:
                pass


def load_json(path: Path) -> tuple[object, str | None]:
    """(the parsed file, None), or (None, what is wrong with it); a missing file is (None, None)."""
    try:
        if not path.exists():
            return None, None
        problem = untrusted(path)
        return (None, problem) if problem else (json.loads(path.read_bytes()), None)
    except (OSError, ValueError, RecursionError) as e:
        return None, str(e)


def read_json(path: Path, what: str) -> dict:
    """A small JSON metadata file of a cache (tuned configs, ...): {} with a warning when it is unusable."""
    obj, problem = load_json(path)
    if problem is None and obj is not None and not isinstance(obj, dict):
        problem = "not a JSON object"
    if problem:
        warn(f"{what} {path} ignored: {problem}")
    return obj if isinstance(obj, dict) and not problem else {}


def write_json(path: Path, obj):
    """Writes through a temporary file and an atomic rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
