"""Store-and-forward spool: SQLite in WAL mode, bounded, oldest-first eviction, survives restarts.

Every telemetry message and event is written here first (with its per-device ``seq``, allocated in the
same transaction so the counter and the message persist together) and deleted only once the broker has
acknowledged it (PUBACK). A message that waited while the broker was unreachable, or that survived an
agent restart, is *deferred*: it is re-published with ``replayed: true``. When the spool is full the
oldest messages are evicted and counted; the count is persisted and reported in telemetry.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import AgentError

__all__ = ["Spool", "SpooledMessage"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    deferred INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('seq', 0), ('evicted', 0);
"""


@dataclass(frozen=True)
class SpooledMessage:
    id: int
    topic: str
    payload: bytes
    deferred: bool


class Spool:
    """A bounded on-disk FIFO of MQTT messages; thread-safe."""

    def __init__(self, path: Path, max_messages: int = 10_000):
        self.path = Path(path)
        self.max_messages = max_messages
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed message survives power loss too (devices get unplugged); the spool's
            # write rate (telemetry interval, events) is far below what an fsync per commit costs.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            # Whatever is left from a previous run was never acknowledged: replay it, marked as such.
            self._db.execute("UPDATE messages SET deferred = 1")
        except sqlite3.Error as exc:
            raise AgentError(f"cannot open the spool {self.path}: {exc}") from exc

    def enqueue(self, topic: str, build: Callable[[int], bytes], *, deferred: bool) -> tuple[int, int]:
        """Allocate the next ``seq``, store ``build(seq)``; returns ``(row id, seq)``. Evicts when full."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                seq = self._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'seq' RETURNING value").fetchone()[0]
                payload = build(seq)
                rid = self._db.execute(
                    "INSERT INTO messages (topic, payload, deferred) VALUES (?, ?, ?)", (topic, payload, int(deferred))
                ).lastrowid
                (count,) = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()
                if count > self.max_messages:
                    excess = count - self.max_messages
                    self._db.execute(
                        "DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT ?)", (excess,)
                    )
                    self._db.execute("UPDATE meta SET value = value + ? WHERE key = 'evicted'", (excess,))
                self._db.execute("COMMIT")
            except BaseException as exc:
                self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise AgentError(f"spool write failed: {exc}") from exc
                raise
        return int(rid), int(seq)

    def pending(self, after_id: int = 0, limit: int = 100) -> list[SpooledMessage]:
        """Messages with ``id > after_id``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, deferred FROM messages WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            ).fetchall()
        return [SpooledMessage(r[0], r[1], bytes(r[2]), bool(r[3])) for r in rows]

    def ack(self, row_id: int) -> None:
        """The broker has the message: forget it."""
        with self._lock:
            self._db.execute("DELETE FROM messages WHERE id = ?", (row_id,))

    def defer_all(self) -> None:
        """The broker went away: everything still here will be a replay."""
        with self._lock:
            self._db.execute("UPDATE messages SET deferred = 1 WHERE deferred = 0")

    @property
    def seq(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0])

    @property
    def evicted(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT value FROM meta WHERE key = 'evicted'").fetchone()[0])

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
