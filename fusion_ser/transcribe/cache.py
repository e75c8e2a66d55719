"""On-disk transcript cache: one SQLite row per (transcriber, audio file identity), committed per clip.

A killed `transcribe` resumes where it stopped and a re-run costs nothing; failures are never cached. Several
processes (the ranks of a torchrun job) may write one cache at once: each write takes the write lock up front
(BEGIN IMMEDIATE) and waits for it up to the busy timeout, so no writer fails on another's lock. The journal stays
SQLite's default rollback journal, not WAL, because WAL needs every process on one host and a multi-node job may keep
its cache on a shared filesystem.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Optional

from fusion_ser.errors import FusionSerError

DB_NAME = "transcripts.sqlite"
BUSY_TIMEOUT_S = 120  # how long a write waits for another process's lock before it fails


class TranscriptCacheError(FusionSerError):
    """A cache directory or database that cannot be used."""


def default_cache_dir() -> Path:
    """~/.cache/fusion-ser/transcripts (XDG_CACHE_HOME respected)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fusion-ser" / "transcripts"


def audio_identity(path: str | Path) -> dict:
    """Resolved path, size and modification time: a changed or replaced file gets a new cache entry."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class TranscriptCache:
    """Maps (transcriber cache_id, audio identity) to its transcript."""

    def __init__(self, directory: Optional[str | Path] = None):
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(str(self.directory / DB_NAME), timeout=BUSY_TIMEOUT_S)
            self.conn.execute("CREATE TABLE IF NOT EXISTS transcripts (key TEXT PRIMARY KEY, transcriber TEXT, "
                              "path TEXT, text TEXT, seconds REAL)")
            self.conn.commit()
        except (OSError, sqlite3.DatabaseError) as e:
            raise TranscriptCacheError(f"cannot use the transcript cache in '{self.directory}': {e}. "
                                       "Use another cache folder or delete the broken database",
                                       options=("cache_dir",)) from e

    @staticmethod
    def key(transcriber_id: str, path: str | Path) -> str:
        ident = json.dumps({"transcriber": transcriber_id, **audio_identity(path)}, sort_keys=True)
        return hashlib.sha256(ident.encode()).hexdigest()

    def get(self, transcriber_id: str, path: str | Path) -> Optional[str]:
        """The cached transcript, or None (also when the file is missing)."""
        try:
            k = self.key(transcriber_id, path)
        except OSError:
            return None
        row = self.conn.execute("SELECT text FROM transcripts WHERE key = ?", (k,)).fetchone()
        return None if row is None else row[0]

    def put(self, transcriber_id: str, path: str | Path, text: str, seconds: float) -> None:
        """Store one transcript and commit at once, so an interruption loses at most the clip in flight."""
        row = (self.key(transcriber_id, path), transcriber_id, str(Path(path).resolve()), text, seconds)
        self.conn.execute("BEGIN IMMEDIATE")  # the write lock now, waiting on other writers up to BUSY_TIMEOUT_S
        try:
            self.conn.execute("INSERT OR REPLACE INTO transcripts VALUES (?, ?, ?, ?, ?)", row)
        except BaseException:
            self.conn.rollback()
            raise
        self.conn.commit()

    def __len__(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM transcripts").fetchone()[0])

    def close(self) -> None:
        self.conn.close()
