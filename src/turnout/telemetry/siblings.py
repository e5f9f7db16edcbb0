"""Several workers, one `/metrics` page: snapshot files summed by the worker that answers a scrape.

`turnout serve --workers N` makes one directory per server (`server_directory`). Each worker writes
`<pid>.json`, a snapshot of its values, when it starts, every PUBLISH_S seconds, and when it answers a
scrape; always to a temporary file renamed over the old one, so a reader never sees half a snapshot.
The worker answering a scrape sums its own values with every other snapshot. Counters must not step
back when a worker goes (a crash, uvicorn replacing a hung worker, SIGHUP or SIGTTOU), so a worker
that leaves folds its last values into `retired.json`, and so does the next scrape for one found dead
(its pid gone; it loses at most its last PUBLISH_S seconds). The retired totals count until the server
stops; a departed worker's active streams do not. Folding reads and rewrites `retired.json`, so it
happens under an flock on `.lock`, as does reading the directory for a page (a half-folded state would
count a worker twice). The lock is never taken on the request path.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

PUBLISH_S = 1.0
STALE_SERVER_S = 3600.0  # a server directory untouched this long belongs to a server that died unannounced

Snapshot = dict[str, Any]  # {"streams": int, "families": {name: [[label values, value or bucket counts]]}}
Totals = dict[str, dict[tuple[str, ...], Any]]  # family name -> label values -> a number or bucket counts


def server_directory(runtime_dir: str) -> Path:
    """A new, empty directory for the snapshots of one server's workers, under `<runtime_dir>/metrics`.
    The name is the master's pid and random bits, so two servers sharing a runtime dir never mix, even
    in containers where both are pid 1. Directories of servers killed before they could remove theirs
    are pruned here: a live server's workers rename a file into theirs every second."""
    root = Path(runtime_dir).resolve() / "metrics"
    root.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - STALE_SERVER_S
    for old in root.iterdir():
        try:
            stale = old.stat().st_mtime < cutoff
        except FileNotFoundError:  # another server starting now pruned it first
            continue
        if stale:
            shutil.rmtree(old, ignore_errors=True)
    directory = root / f"{os.getpid()}-{secrets.token_hex(4)}"
    directory.mkdir()
    return directory


def add_snapshot(totals: Totals, snapshot: Snapshot) -> None:
    """Add a snapshot's values to `totals`, never changing a value in place (it may be a live list).
    Bucket counts of another length (a worker of another turnout version, after an upgrade and a
    SIGHUP) are left out rather than misaligned."""
    for name, pairs in snapshot["families"].items():
        values = totals.setdefault(name, {})
        for labels, value in pairs:
            key = tuple(labels)
            have = values.get(key)
            if have is None:
                values[key] = value
            elif isinstance(have, list):
                if len(have) == len(value):
                    values[key] = [a + b for a, b in zip(have, value, strict=True)]
            else:
                values[key] = have + value


def read_snapshot(path: Path) -> Snapshot | None:
    try:
        snapshot: Snapshot = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    return snapshot


def _alive(pid: int) -> bool:
    """Whether a sibling still runs: a process with its pid exists and is this user's (every worker of a
    server runs as its master's user, so another user's process has taken a dead worker's pid)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class Siblings:
    """This worker's snapshot file and the others in its server's directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / f"{os.getpid()}.json"
        self.retired = directory / "retired.json"

    def join(self) -> None:
        """Retire a snapshot under this worker's pid: a dead worker's, whose pid this one was given."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._locked():
            old = read_snapshot(self.path)
            if old is not None:
                self._retire([old], [self.path])

    def publish(self, snapshot: bytes) -> None:
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_bytes(snapshot)
        except FileNotFoundError:  # the directory was removed under a running server: make it again
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(snapshot)
        os.replace(tmp, self.path)

    def gather(self) -> list[Snapshot]:
        """The snapshots to add to this worker's values: live siblings' and the retired totals, after
        folding the snapshots of dead siblings into the latter."""
        with self._locked():
            live: list[Snapshot] = []
            dead: list[Snapshot] = []
            gone: list[Path] = []
            for path in self.directory.glob("*.json"):
                if not path.stem.isdigit() or path == self.path:
                    continue
                snapshot = read_snapshot(path)
                if snapshot is None:
                    continue
                if _alive(int(path.stem)):
                    live.append(snapshot)
                else:
                    dead.append(snapshot)
                    gone.append(path)
            retired = self._retire(dead, gone) if dead else read_snapshot(self.retired)
        return live if retired is None else [retired, *live]

    def leave(self, snapshot: Snapshot) -> None:
        """Fold this worker's last values into the retired totals and remove its snapshot."""
        with self._locked():
            self._retire([snapshot], [self.path])

    def _retire(self, snapshots: list[Snapshot], paths: list[Path]) -> Snapshot:
        """Add `snapshots` to the retired totals, then remove their files. Call it under the lock."""
        totals: Totals = {}
        for snapshot in (read_snapshot(self.retired), *snapshots):
            if snapshot is not None:
                add_snapshot(totals, snapshot)
        retired: Snapshot = {"families": {name: list(values.items()) for name, values in totals.items()}}
        tmp = self.retired.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(retired))
        os.replace(tmp, self.retired)
        for path in paths:
            path.unlink(missing_ok=True)
        return retired

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The directory's lock; a holder that dies releases it with its file descriptor."""
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
