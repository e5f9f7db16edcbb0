"""The audit log: one metadata-only row per finished request, in SQLite and optionally rotating JSONL.

Never text: no prompt, completion, key or bearer token reaches it. A decision's `reason` is kept when
turnout wrote it (rule names, "every strategy abstained"); an `llm` decision's reason is the judge's own
words, which may paraphrase the prompt, so only a bounded code is stored (`llm_verdict`, or
`llm_verdict_cached` when the verdict came from the judge's cache).

The request path never waits for a disk:

    emit_many(records)  in the batch that builds the records (telemetry.Telemetry.flush): each record's
                        row serialized by orjson (`docs`, ~2 us) and appended to an in-memory deque as
                        (ts, document): no I/O, no lock
    writer thread       every `flush_s`, or as soon as BATCH rows wait, inserts them in one transaction
                        with multi-row INSERTs (see insert_many), then appends the JSONL lines
    close()             the writer writes everything still queued, then stops: a clean shutdown loses nothing

A writer that falls MAX_QUEUED records behind (a stuck disk) drops new records and counts them rather
than growing without bound. The schema is built by named migrations (MIGRATIONS), applied in order at
start and recorded in `schema_migrations`; a schema change is a new migration, never an edit to an old one.
Rows are stored in a table per UTC day (0007_a_table_per_day) and read through the view `requests`.
Once the store is open and every PURGE_EVERY_S, each day whose last second is older than
`retention_days` is dropped whole; rows from before 0007, in the one table `request_log`, are deleted as
they expire, PURGE_CHUNK rows per transaction with the queued rows written between chunks, so a large
purge neither delays the start nor holds up writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime
from itertools import repeat, starmap
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

import orjson

from turnout.config import Settings
from turnout.errors import RequestError, TurnoutError
from turnout.types import RequestRecord

log = logging.getLogger("turnout")

FLUSH_S = 0.5  # the longest a record waits in memory (`telemetry.audit.flush_s` for the audit log)
BATCH = 256  # rows per transaction; a full batch wakes the writer at once
MAX_QUEUED = 100_000
PURGE_EVERY_S = 3600.0
# Expired rows deleted per transaction, between the writes of queued rows. One DELETE of 1M rows held the
# writer for 5.8-7.3 s and left a 610 MB write-ahead log; in chunks of 20,000 the same rows took 4.0 s,
# the log stayed at 12 MB, and writes go on between chunks (EPYC VM, docs/audit.md).
PURGE_CHUNK = 20_000
RETRIES = 3  # a failed batch is tried again on this many later flushes before its rows are dropped
FAILING_LOG_S = 60.0  # while writes fail, at most one log line this often (not one per batch)
WAL_LIMIT_BYTES = 64 * 1024 * 1024  # the write-ahead log is cut back to this after a checkpoint
BUSY_TIMEOUT_MS = 5000  # several worker processes share one file
DAY_S = 86400.0
EPOCH = date(1970, 1, 1)
REASON_CHARS = 200
# Strategies whose reasons turnout writes itself; any other strategy's reason is replaced by a code.
OWN_REASONS = frozenset({"explicit", "rules", "semantic", "classifier", "fallback", "sticky", "passthrough"})

# A migration: its name and its steps, each an SQL statement or, where it depends on what the store holds
# (the tables of 0007's days), a function of the connection.
Migration = tuple[str, tuple[str | Callable[[sqlite3.Connection], None], ...]]

COLUMNS = (
    "ts", "day", "request_id", "endpoint", "status", "error", "router", "route", "model", "upstream",
    "strategy", "reason", "confidence", "threshold", "margin", "scores", "provenance", "trace",
    "decision_ms", "attempts", "stream", "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens",
    "tokens_estimated", "cost_usd", "cache", "guards", "cached_tokens",
)  # fmt: skip
DOC_FIELDS = COLUMNS[1:]  # a row's document: these values in this order (a JSON array), `ts` beside it


# The values of a 0004/0006 row's `doc`, in order, and the view `requests` over them. Spelled out, not
# taken from DOC_FIELDS: a migration never changes once shipped.
_DOC_0004 = (
    "day", "request_id", "endpoint", "status", "error", "router", "route", "model", "upstream", "strategy",
    "reason", "confidence", "threshold", "margin", "scores", "provenance", "trace", "decision_ms", "attempts",
    "stream", "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens", "tokens_estimated", "cost_usd",
    "cache", "guards",
)  # fmt: skip
_VIEW_0004 = (
    "CREATE VIEW requests AS SELECT id, ts, "
    + ", ".join(f"json_extract(doc, '$[{i}]') AS {f}" for i, f in enumerate(_DOC_0004))
    + " FROM request_log"
)


def _rows_as_documents() -> tuple[str, ...]:
    """0004: one `doc` per row instead of 28 columns, and a view `requests` with the same columns as
    before. SQLite's cost per row grows with the number of values bound and stored (~0.25 us each,
    measured), so the writer's ~8-12 us per 29-column row fell to ~3 us; the JSON array is made by orjson
    in one call on the loop, for about what building the row tuple cost. Readers keep querying `requests`
    (json_extract per column, ~1.7 us more per row read): reads are rare reports, writes are every request.
    Its fields and view are _DOC_0004 and _VIEW_0004, which 0006 restores."""
    json_fields = {"scores", "provenance", "trace", "attempts", "guards"}
    old = ", ".join(f"json({f})" if f in json_fields else f for f in _DOC_0004)
    return (
        "CREATE TABLE request_log (id INTEGER PRIMARY KEY, ts REAL NOT NULL, doc TEXT NOT NULL)",
        f"INSERT INTO request_log (id, ts, doc) SELECT id, ts, json_array({old}) FROM requests ORDER BY id",
        "DROP TABLE requests",
        "CREATE INDEX request_log_ts ON request_log (ts)",
        _VIEW_0004,
    )


def _rows_in_batches() -> tuple[str, ...]:
    """0005: the rows one write makes (up to BATCH) stored as one `request_batch` row, `docs` a JSON array
    of rows, each the values of COLUMNS in order (`ts` first); `ts` and `until` are the batch's first and
    last request time. One SQLite row and one orjson call per batch instead of per request: the loop's
    part went from ~3.4 to ~0.8 us per row in a hot loop (7.2-8.4 -> 2.2 us in bench/telemetry_cost.py:
    the row is a list, orjson runs on the writer), and the writer's stayed about the same, ~6 us per row,
    now mostly orjson and the bytes SQLite writes (EPYC VM). The view `requests` keeps its columns, one row per request
    (`json_each`); `batch_ts` and `batch_until` are added so that a reader's time range can use the index
    (`ts >= lo AND ts < hi` had to bound `batch_ts` and `batch_until` too). Rows written before keep their
    time, with SQLite's 15 significant digits. Undone by 0006: reads became ~16x slower."""
    fields = (
        "ts", "day", "request_id", "endpoint", "status", "error", "router", "route", "model", "upstream",
        "strategy", "reason", "confidence", "threshold", "margin", "scores", "provenance", "trace", "decision_ms",
        "attempts", "stream", "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens", "tokens_estimated",
        "cost_usd", "cache", "guards",
    )  # fmt: skip
    view = ", ".join(f"json_extract(j.value, '$[{i}]') AS {f}" for i, f in enumerate(fields))
    return (
        "CREATE TABLE request_batch (id INTEGER PRIMARY KEY, ts REAL NOT NULL, until REAL NOT NULL, "
        "docs TEXT NOT NULL)",
        "INSERT INTO request_batch (id, ts, until, docs) "
        "SELECT id, ts, ts, json_array(json('[' || ts || ',' || substr(doc, 2))) FROM request_log ORDER BY id",
        "DROP VIEW requests",
        "DROP TABLE request_log",
        "CREATE INDEX request_batch_until ON request_batch (until)",
        f"CREATE VIEW requests AS SELECT (b.id << 12) + j.key AS id, {view}, b.ts AS batch_ts, "
        "b.until AS batch_until FROM request_batch AS b, json_each(b.docs) AS j",
    )


def _one_row_per_request_again() -> tuple[str, ...]:
    """0006: back to 0004's layout, one `request_log (id, ts, doc)` row per request, `doc` the values of
    DOC_FIELDS as a JSON array. 0005's batches made the loop's part cheaper, but every read had to render
    each row of a batch back to JSON and parse it again for every column (a 500k-row usage query took
    5.5 s instead of 0.34 s). The writer now serializes each row itself, so the loop still only makes the
    row's list (see AuditSink.write). Rows keep the ids the view gave them (`batch id x 4096 + index`)."""
    return (
        "CREATE TABLE request_log (id INTEGER PRIMARY KEY, ts REAL NOT NULL, doc TEXT NOT NULL)",
        "INSERT INTO request_log (id, ts, doc) SELECT (b.id << 12) + j.key, json_extract(j.value, '$[0]'), "
        "json_remove(j.value, '$[0]') FROM request_batch AS b, json_each(b.docs) AS j ORDER BY b.id, j.key",
        "DROP VIEW requests",
        "DROP TABLE request_batch",
        "CREATE INDEX request_log_ts ON request_log (ts)",
        _VIEW_0004,
    )


def _a_table_per_day() -> tuple[str, ...]:
    """0007: new rows go to a table per UTC day, `request_log_YYYYMMDD (id, ts, doc)` with an index on `ts`,
    made by the writer when the day's first row comes (`day_tables`); `requests` becomes the view over
    them all (`requests_view`), remade whenever one is added or dropped. Retention drops a whole day
    once all of it has expired, instead of deleting its rows one by one: ~3.5 us of writer CPU per row,
    about what inserting it cost, against ~0.2 us per row for dropping its day (EPYC VM, docs/audit.md).
    `request_log` keeps the rows written before and is read through the view too; its rows are deleted
    one by one as they expire, as before, and the table is dropped once empty. Its ids stay as they
    were; a day table's row reads as `day number x 2^32 + its id` (the day number counted from
    1970-01-01), so ids stay unique and in time order."""
    return ("DROP VIEW requests", _view_0007("SELECT id, ts, doc FROM request_log"))


def _view_0007(source: str, fields: tuple[str, ...] = _DOC_0004) -> str:
    """The view `requests` of 0007 on: `fields` (0004's, unless said), read from the union in `source`."""
    columns = ", ".join(f"json_extract(doc, '$[{i}]') AS {f}" for i, f in enumerate(fields))
    return f"CREATE VIEW requests AS SELECT id, ts, {columns} FROM ({source})"


# 0008's fields: 0004's, then the cached prompt tokens (a row written before reads it as null).
_DOC_0008 = (*_DOC_0004, "cached_tokens")


def _view_with_cached_tokens(conn: sqlite3.Connection) -> None:
    """0008: the view `requests` gets `cached_tokens`, the 29th value of a row's document: prompt tokens
    the upstream served from its cache, priced at the model's `cached_input_price`."""
    conn.execute("DROP VIEW IF EXISTS requests")
    conn.execute(requests_view(*day_tables(conn), fields=_DOC_0008))


MIGRATIONS: tuple[Migration, ...] = (
    (
        "0001_requests",
        (
            """CREATE TABLE requests (
                id INTEGER PRIMARY KEY,
                ts REAL NOT NULL,
                day TEXT NOT NULL,
                request_id TEXT NOT NULL,
                endpoint TEXT NOT NULL,
                status INTEGER NOT NULL,
                error TEXT,
                router TEXT,
                route TEXT,
                model TEXT,
                upstream TEXT,
                strategy TEXT,
                reason TEXT,
                confidence REAL,
                threshold REAL,
                margin REAL,
                scores TEXT,
                provenance TEXT,
                trace TEXT,
                decision_ms REAL,
                attempts TEXT,
                stream INTEGER NOT NULL,
                latency_ms REAL NOT NULL,
                ttft_ms REAL,
                prompt_tokens INTEGER,
                completion_tokens INTEGER,
                tokens_estimated INTEGER NOT NULL,
                cost_usd REAL,
                cache TEXT,
                guards TEXT
            )""",
        ),
    ),
    (
        "0002_index_time_route",
        (
            "CREATE INDEX requests_ts ON requests (ts)",
            "CREATE INDEX requests_route_ts ON requests (route, ts)",
            "CREATE INDEX requests_request_id ON requests (request_id)",
        ),
    ),
    (
        # Every reader (usage, report, replay) scans a time range, which `requests_ts` serves; the other
        # two indexes cost the writer ~3.5 us of its ~17 us per row. A request id's first 12 hex digits
        # are its arrival in ms, so a look-up by id can bound `ts` too (docs/audit.md).
        "0003_only_the_time_index",
        ("DROP INDEX IF EXISTS requests_route_ts", "DROP INDEX IF EXISTS requests_request_id"),
    ),
    ("0004_rows_as_documents", _rows_as_documents()),
    ("0005_rows_in_batches", _rows_in_batches()),
    ("0006_one_row_per_request_again", _one_row_per_request_again()),
    ("0007_a_table_per_day", _a_table_per_day()),
    ("0008_cached_tokens", (_view_with_cached_tokens,)),
)


# --- a table per day (0007) ------------------------------------------------------------------

LEGACY = "request_log"  # the rows written before 0007, deleted one by one as they expire
DAY_TABLE = re.compile(r"request_log_(\d{4})(\d{2})(\d{2})")
# Tables per UNION ALL in the view: SQLite allows 500 terms in one compound SELECT, so a longer list (a
# retention of more than VIEW_GROUP days) is a union of unions of at most this many.
VIEW_GROUP = 400


def day_table(days: int) -> str:
    """The table of the UTC day `days` days after 1970-01-01."""
    return "request_log_" + _day_name(days).replace("-", "")


def day_tables(conn: sqlite3.Connection) -> tuple[bool, list[int]]:
    """Whether the pre-0007 table is still there, and the days (numbers) that have a table, oldest first."""
    legacy, days = False, []
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        found = DAY_TABLE.fullmatch(name)
        if found is not None:
            y, m, d = map(int, found.groups())
            days.append((date(y, m, d) - EPOCH).days)
        legacy = legacy or name == LEGACY
    return legacy, sorted(days)


def requests_view(legacy: bool, days: Sequence[int], fields: tuple[str, ...] = DOC_FIELDS) -> str:
    """`CREATE VIEW requests` over these tables. A range of `ts` is searched in each table's own index."""
    arms = [f"SELECT id, ts, doc FROM {LEGACY}"] if legacy else []
    arms += [f"SELECT {d << 32} + id AS id, ts, doc FROM {day_table(d)}" for d in days]
    if not arms:
        return _view_0007("SELECT NULL AS id, NULL AS ts, NULL AS doc WHERE 0", fields)
    if len(arms) > VIEW_GROUP:
        groups = (arms[i : i + VIEW_GROUP] for i in range(0, len(arms), VIEW_GROUP))
        arms = [f"SELECT * FROM ({' UNION ALL '.join(group)})" for group in groups]
    return _view_0007(" UNION ALL ".join(arms), fields)


def make_day_table(conn: sqlite3.Connection, day: int) -> None:
    """The table of day number `day`, unless it is there; in the caller's transaction (then remake_view)."""
    table = day_table(day)
    conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY, ts REAL NOT NULL, doc TEXT NOT NULL)")
    conn.execute(f"CREATE INDEX IF NOT EXISTS {table}_ts ON {table} (ts)")


def remake_view(conn: sqlite3.Connection) -> None:
    """The view over the tables there are now; in the caller's transaction."""
    conn.execute("DROP VIEW IF EXISTS requests")
    conn.execute(requests_view(*day_tables(conn)))


# --- paths, days and reading ------------------------------------------------------------------


def audit_path(settings: Settings) -> Path:
    a = settings.telemetry.audit
    return Path(a.sqlite_path) if a.sqlite_path else Path(settings.runtime_dir) / "audit.sqlite3"


# The last day named, as one tuple (start, end, name): every row of a day asks for the same name, and a
# tuple is replaced whole, so a writer thread never reads half of an update. ~0.1 us against ~0.5 us
# through the lru_cache below (EPYC VM).
_LAST_DAY = [(0.0, 0.0, "")]


def utc_day(ts: float) -> str:
    start, end, name = _LAST_DAY[0]
    if start <= ts < end:
        return name
    _LAST_DAY[0] = bounds = utc_day_bounds(ts)
    return bounds[2]


def utc_day_bounds(ts: float) -> tuple[float, float, str]:
    """The UTC day of `ts`: its start and end (unix seconds) and its name; what utc_day (and the C audit
    row, _record.c) keeps for the next row, which is almost always of the same day."""
    days = int(ts // DAY_S)
    return days * DAY_S, (days + 1) * DAY_S, _day_name(days)


@functools.lru_cache(maxsize=16)
def _day_name(days: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(days * DAY_S))


def parse_day(value: str, param: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise RequestError(f"`{param}` must be a date, YYYY-MM-DD (got {value!r})", param=param) from None


def day_start(d: date) -> float:
    """The first second of a UTC day, as unix seconds."""
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


def cached_tokens_column(conn: sqlite3.Connection) -> str:
    """`cached_tokens`, or `NULL` in a store no gateway of this version has opened yet (before 0008): the
    commands read a store read-only, so an upgrade is not applied until the gateway restarts."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    return "cached_tokens" if "cached_tokens" in columns else "NULL"


def open_store(path: Path, what: str = "audit log", fix: str = "is `telemetry.audit` enabled?") -> sqlite3.Connection:
    """A read-only connection to an audit (or review) store; rows come back as sqlite3.Row."""
    if not path.is_file():
        raise TurnoutError(f"no {what} at `{path}`: {fix}")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


# --- schema -----------------------------------------------------------------------------------


def connect(path: Path) -> sqlite3.Connection:
    """A writing connection: autocommit (transactions are explicit), WAL so readers never block it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")  # a spike never leaves a huge log behind
    return conn


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration]) -> list[str]:
    """Apply the migrations not yet recorded, in order, each in its own transaction. Returns their names.

    Each one takes the write lock before checking what is applied, so processes starting together
    apply each migration once."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    applied: list[str] = []
    for name, statements in migrations:
        with immediate(conn):
            if conn.execute("SELECT 1 FROM schema_migrations WHERE name = ?", (name,)).fetchone() is None:
                for statement in statements:
                    if isinstance(statement, str):
                        conn.execute(statement)
                    else:
                        statement(conn)
                conn.execute("INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)", (name, time.time()))
                applied.append(name)
    return applied


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """A transaction that takes the write lock at once, committed at the end, rolled back if it or the
    commit raises (a failing store may fail the rollback too: the first error is the one raised)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


# --- the background writer --------------------------------------------------------------------

T = TypeVar("T")


class Throttle:
    """At most once every `seconds`: `due()` says yes, and starts a new wait, when the last yes is that old
    (or when forced). For log lines that a failing store would otherwise repeat every batch."""

    __slots__ = ("_next", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._next = 0.0

    def due(self, force: bool = False) -> bool:
        now = time.monotonic()
        if now < self._next and not force:
            return False
        self._next = now + self.seconds
        return True


class BackgroundWriter(Generic[T]):
    """A daemon thread that owns one SQLite connection and writes what `put` queued, in batches.

    Subclasses name their store (`table`, `migrations`, `what`, `fix`) and turn a batch into rows (`write`).
    """

    table = ""
    migrations: tuple[Migration, ...] = ()
    what = ""
    fix = ""
    name = ""  # the `log` label of its metrics (turnout_log_rows_total)
    # SQLite's `secure_delete` on the writing connection, whatever its build default (Debian's: on): ON
    # overwrites a deleted row's bytes with zeros, which a store of request text needs.
    secure_delete = "ON"

    def __init__(self, path: Path, retention_days: float, flush_s: float = FLUSH_S) -> None:
        self.path = path
        self.retention_s = retention_days * DAY_S
        self.flush_s = flush_s
        self.written = 0
        self.dropped = 0
        self._queue: deque[T] = deque()
        self._wake = threading.Event()
        self._ready = threading.Event()
        self._stopping = False
        self._room = MAX_QUEUED  # 0 once closed: later records are counted as dropped
        self._error: BaseException | None = None
        self._retries = 0
        self._failing = False  # a write failed, and none has worked since
        self._failure_log = Throttle(FAILING_LOG_S)
        self._logged_drop = False  # the last failure logged was a drop
        self._recovery_log = Throttle(FAILING_LOG_S)
        self._thread: threading.Thread | None = None
        self.purge_chunk = PURGE_CHUNK

    @property
    def queued(self) -> int:
        """Rows waiting for the writer."""
        return len(self._queue)

    def put(self, item: T) -> None:
        """The hot path: a deque append, and a wake-up when a batch is full."""
        self.put_many((item,))

    def put_many(self, items: Sequence[T]) -> None:
        """`put` for several items: what fits under MAX_QUEUED is queued, the rest counted as dropped."""
        q = self._queue
        before = len(q)
        room = max(self._room - before, 0)
        if room >= len(items):
            q.extend(items)
        else:
            q.extend(items[:room])
            self.dropped += len(items) - room
        if before < BATCH <= len(q):  # a full batch waits: wake the writer once, not on every later put
            self._wake.set()

    async def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"turnout-{self.table}-writer", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._ready.wait)
        if self._error is not None:
            self._thread = None
            raise TurnoutError(f"cannot open the {self.what} `{self.path}` ({self._error}): {self.fix}")

    async def close(self) -> None:
        self._room = 0
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping = True
        self._wake.set()
        await asyncio.to_thread(thread.join)
        if self.dropped:
            log.warning("%s: %d records were dropped (the writer fell behind or failed)", self.what, self.dropped)

    def write(self, conn: sqlite3.Connection, batch: list[T]) -> int | None:
        """Store `batch`; returns how many of its rows were stored when not all of them were."""
        raise NotImplementedError

    def opened(self, conn: sqlite3.Connection) -> None:
        """Called in the writer thread once the database is ready (JSONL files open here)."""

    def closing(self) -> None:
        """Called in the writer thread after the last write."""

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            conn = connect(self.path)
            conn.execute(f"PRAGMA secure_delete = {self.secure_delete}")
            migrate(conn, self.migrations)
            self.opened(conn)
        except Exception as exc:
            if conn is not None:
                conn.close()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        next_purge = time.monotonic()  # the first purge right away, after the start
        purging = False  # expired rows may be left: one more chunk after each drain
        try:
            while True:
                self._wake.wait(0 if purging else self.flush_s)
                self._wake.clear()
                stopping = self._stopping  # read before draining: whatever was queued before close is written
                self._drain(conn)
                if not purging and time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + PURGE_EVERY_S
                    purging = True
                if purging:
                    try:
                        purging = self.purge(conn) == self.purge_chunk
                    except sqlite3.Error:  # a busy store: the next hour's purge catches up
                        purging = False
                        log.warning("%s: deleting old rows failed", self.what, exc_info=True)
                if stopping:
                    if self._queue:  # the last tries failed
                        self.dropped += len(self._queue)
                    break
        finally:
            self.closing()
            conn.close()

    def _drain(self, conn: sqlite3.Connection) -> None:
        q = self._queue
        while q:
            batch = list(starmap(q.popleft, repeat((), min(len(q), BATCH))))  # no bytecode per row
            try:
                stored = self.write(conn, batch)
            except Exception as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):  # a failing store may fail this too
                        conn.execute("ROLLBACK")
                self._retries += 1
                retry = self._retries <= RETRIES and not self._stopping
                if not retry:
                    self.dropped += len(batch)
                self._failed(exc, dropping=not retry)
                if retry:
                    q.extendleft(reversed(batch))
                    return
                continue
            self._retries = 0
            self.written += len(batch) if stored is None else stored
            if self._failing:
                self._failing = False
                if self._recovery_log.due():
                    log.warning("%s: writing again; %d records dropped in all", self.what, self.dropped)

    def _failed(self, exc: Exception, dropping: bool) -> None:
        """Log a failed write with its traceback, at most once a FAILING_LOG_S, plus once more when rows
        start being dropped (a warning while batches are retried, an error once they are dropped): a store
        that stays broken (a full disk) would otherwise log every batch, and one that flaps every few.
        Call it from the `except` block."""
        self._failing = True
        if not self._failure_log.due(force=dropping and not self._logged_drop):
            return
        self._logged_drop = dropping
        reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, sqlite3.Error) else type(exc).__name__
        if dropping:
            message = "%s: writes keep failing (%s); %d records dropped so far (turnout_log_rows_total)"
            log.error(message + "; logged at most once a minute", self.what, reason, self.dropped, exc_info=True)
        else:
            message = "%s: a write failed (%s); a batch is retried on the next %d flushes, then its rows are dropped"
            log.warning(message + "; logged at most once a minute", self.what, reason, RETRIES, exc_info=True)

    def purge(self, conn: sqlite3.Connection) -> int:
        """Delete up to `purge_chunk` rows older than the retention, oldest first, in one transaction
        (found through the table's `ts` index); returns how many went."""
        t = self.table
        sql = f"DELETE FROM {t} WHERE rowid IN (SELECT rowid FROM {t} WHERE ts < ? ORDER BY ts LIMIT ?)"
        return conn.execute(sql, (time.time() - self.retention_s, self.purge_chunk)).rowcount


CHUNKS = (256, 64, 16, 4, 1)  # rows per INSERT statement; 256 x 29 values stays under SQLite's 32,766 variables


@functools.lru_cache(maxsize=32)
def multi_insert(table: str, columns: tuple[str, ...], rows: int) -> str:
    row = f"({', '.join('?' * len(columns))})"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([row] * rows)}"


Row = tuple[Any, ...]


def insert_many(conn: sqlite3.Connection, table: str, columns: tuple[str, ...], rows: Sequence[Row]) -> None:
    """All rows in one transaction, up to 256 rows per statement.

    Not executemany: it releases and retakes the GIL around every row's sqlite3_step, and with the event
    loop busy on the same core each of those hand-offs between the writer thread and the loop cost more
    CPU than the insert itself (measured under load: ~65 us per row with executemany, see
    docs/telemetry.md). Multi-row statements take the GIL back a handful of times per batch."""
    with immediate(conn):
        insert_rows(conn, table, columns, rows)


def insert_rows(conn: sqlite3.Connection, table: str, columns: tuple[str, ...], rows: Sequence[Row]) -> None:
    """insert_many's statements, in the caller's transaction."""
    insert_flat(conn, table, columns, [value for row in rows for value in row])


def insert_flat(conn: sqlite3.Connection, table: str, columns: tuple[str, ...], values: list[Any]) -> None:
    """insert_rows for rows given as one flat list of their values, row after row."""
    width = len(columns)
    done, total = 0, len(values) // width
    for size in CHUNKS:
        while total - done >= size:
            conn.execute(multi_insert(table, columns, size), values[done * width : (done + size) * width])
            done += size


# --- rows and JSONL ----------------------------------------------------------------------------


def stored_reason(record: RequestRecord) -> str | None:
    """The reason as stored: turnout's own words, bounded; a code for reasons a model wrote."""
    strategy = record.strategy
    if strategy is None or record.reason is None:
        return record.reason
    if strategy in OWN_REASONS:
        return record.reason[:REASON_CHARS]
    if strategy == "llm":
        return "llm_verdict_cached" if "llm:cached" in record.provenance else "llm_verdict"
    return f"{strategy}_decision"


def dumps(value: Any, option: int = 0) -> bytes:
    """orjson, with numpy scalars (strategies' scores) and, as a last resort, anything else as a string."""
    return orjson.dumps(value, default=str, option=option | orjson.OPT_SERIALIZE_NUMPY)


def _audit_row(r: RequestRecord) -> list[Any]:
    """A record's row: the metadata and nothing else, the values of COLUMNS in order. Serialized later, a
    batch at a time, by the writer (AuditSink.write); attempts are dataclasses whose fields are the
    stored keys (times already rounded), so orjson writes them as they are. The reference for `audit_row`,
    the same function in C (_record.c), which runs where it was built."""
    return [
        r.started_at, utc_day(r.started_at), r.request_id, r.endpoint, r.status, r.error, r.router, r.route,
        r.model, r.upstream, r.strategy, stored_reason(r), r.confidence, r.threshold, r.margin, r.scores,
        r.provenance, r.trace, r.decision_ms, r.attempts, r.stream, r.latency_ms, r.ttft_ms, r.prompt_tokens,
        r.completion_tokens, r.tokens_estimated, r.cost_usd, r.cache, r.guards, r.cached_tokens,
    ]  # fmt: skip


Doc = tuple[Any, str]  # a row as the writer gets it: its `ts`, and its other values as one JSON array


def _docs(records: list[RequestRecord], dumps: Callable[..., bytes], option: int) -> tuple[list[Doc], list[int]]:
    """Each record's row (`_audit_row`) as its `ts` and the JSON text of its other values, and the indices of
    the records `dumps` could not write. The reference for `docs`, the same function in C (_record.c)."""
    pairs: list[Doc] = []
    bad: list[int] = []
    for i, record in enumerate(records):
        row = _audit_row(record)
        try:
            doc = dumps(row[1:], default=str, option=option).decode()
        except TypeError:  # orjson.JSONEncodeError is one
            bad.append(i)
            continue
        pairs.append((row[0], doc))
    return pairs, bad


def _split(pairs: list[Doc], start: float, end: float) -> tuple[list[Any], list[Doc]]:
    """The writer's batch by day: the pairs of the day [start, end) as one flat list (ts, doc, ts, doc, ...:
    insert_flat's values), the other days' pairs as they are. The reference for `split`, in C (_record.c)."""
    flat: list[Any] = []
    other: list[Doc] = []
    for pair in pairs:
        if start <= pair[0] < end:
            flat += pair
        else:
            other.append(pair)
    return flat, other


audit_row: Callable[[RequestRecord], list[Any]]
docs: Callable[[list[RequestRecord], Callable[..., bytes], int], tuple[list[Doc], list[int]]]
split: Callable[[list[Doc], float, float], tuple[list[Any], list[Doc]]]
try:  # ~4,100 instructions per row in Python, a few hundred in C (see _record.c)
    from turnout.telemetry import _record
except ImportError:  # not built (no C compiler at install)
    audit_row, docs, split = _audit_row, _docs, _split
else:
    _record.prepare_rows(_audit_row, utc_day_bounds, stored_reason, OWN_REASONS, REASON_CHARS)
    audit_row, docs, split = _record.audit_row, _record.docs, _record.split


def jsonl_line(ts: Any, doc: str) -> bytes:
    """A row as one JSON line: the same fields as the columns of `requests`, by name."""
    return dumps(dict(zip(COLUMNS, (ts, *orjson.loads(doc)), strict=True)), orjson.OPT_APPEND_NEWLINE)


class RotatingJsonl:
    """Appends lines to `path`; past `max_bytes` the file becomes `path.1` (`.1` becomes `.2`, ...),
    keeping `backups` old files (with 0, the file is truncated instead)."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = open(path, "ab")  # noqa: SIM115 (kept open by the writer thread)
        self._size = self._file.tell()

    def write(self, lines: list[bytes]) -> None:
        pending: list[bytes] = []
        size = self._size
        for line in lines:
            if size and size + len(line) > self.max_bytes:
                self._file.write(b"".join(pending))
                pending.clear()
                self._rotate()
                size = 0
            pending.append(line)
            size += len(line)
        self._file.write(b"".join(pending))
        self._file.flush()
        self._size = size

    def _rotate(self) -> None:
        self._file.close()
        if self.backups:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
            self._file = open(self.path, "ab")  # noqa: SIM115
        else:
            self._file = open(self.path, "wb")  # noqa: SIM115

    def close(self) -> None:
        self._file.close()


# --- the sink ------------------------------------------------------------------------------------


class AuditSink(BackgroundWriter[Doc]):
    """Rows go to the table of their UTC day (0007_a_table_per_day), read through the view `requests`."""

    table = LEGACY  # the rows from before 0007: BackgroundWriter.purge deletes them one by one
    migrations = MIGRATIONS
    what = "audit log"
    name = "audit"
    fix = "set `telemetry.audit.sqlite_path` to a writable file, or `telemetry.audit.enabled: false`"
    # Pages freed by dropping a day go to the free list as they are instead of being overwritten with zeros
    # first: that write cost as much as deleting the rows one by one (4.8 us per row dropped, against 0.24,
    # EPYC VM). New rows reuse the pages; an audit row holds no request text.
    secure_delete = "FAST"

    def __init__(self, settings: Settings) -> None:
        cfg = settings.telemetry.audit
        super().__init__(audit_path(settings), cfg.retention_days, cfg.flush_s)
        self.cfg = cfg
        self.jsonl: RotatingJsonl | None = None
        self.unwritable = 0  # rows orjson could not write (dropped, and counted in `dropped` too)
        self.jsonl_lost = 0  # JSONL lines that could not be written (their rows are in SQLite)
        self._jsonl_log = Throttle(FAILING_LOG_S)
        self._days: set[int] = set()  # days known to have a table (made by this writer or another process)
        self._today = (0.0, 0.0, "")  # the newest day's table: [start, end) and name, where almost every row goes

    def emit(self, record: RequestRecord) -> None:
        self.emit_many([record])

    def emit_many(self, records: list[RequestRecord]) -> None:
        """A batch of records (telemetry.Telemetry.flush), each serialized here, on the event loop, and
        queued as (ts, its JSON document) in one hand-over. A record orjson cannot write is dropped and
        counted; the others are queued. Serializing on the writer thread instead cost ~0.5 % more CPU per
        stream: its rows there were lists of 30 values it read and freed long after the request, when
        they were no longer in the CPU's caches (docs/metrics.md)."""
        pairs, bad = docs(records, orjson.dumps, orjson.OPT_SERIALIZE_NUMPY)
        if bad:
            if not self.unwritable:
                try:  # the row again, for its traceback in the log
                    dumps(audit_row(records[bad[0]])[1:])
                except TypeError:
                    log.exception("audit log: a row could not be serialized; it is dropped (logged once)")
            self.unwritable += len(bad)
            self.dropped += len(bad)
        self.put_many(pairs)

    def opened(self, conn: sqlite3.Connection) -> None:
        self._days = set(day_tables(conn)[1])
        if self.cfg.jsonl_path:
            self.jsonl = RotatingJsonl(Path(self.cfg.jsonl_path), self.cfg.jsonl_max_bytes, self.cfg.jsonl_backups)

    def closing(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()

    def write(self, conn: sqlite3.Connection, batch: list[Doc]) -> int | None:
        """Each row in the table of its day, all in one transaction (insert_flat, insert_rows), then the
        JSONL lines."""
        start, end, today = self._today
        flat, others = split(batch, start, end)
        other: dict[str, list[Row]] = {}  # other days' (a stream that began before midnight, a day's first row)
        for pair in others:
            other.setdefault(self._table_of(conn, pair[0]), []).append(pair)
        try:
            with immediate(conn):
                insert_flat(conn, today, ("ts", "doc"), flat)
                for table, rows in other.items():
                    insert_rows(conn, table, ("ts", "doc"), rows)
        except sqlite3.OperationalError:  # a day another worker dropped, or a failing disk: the batch is retried
            self._days, self._today = set(), (0.0, 0.0, "")  # and each day's table looked up again first
            raise
        if self.jsonl is not None:
            try:
                self.jsonl.write(list(starmap(jsonl_line, batch)))
            except OSError:  # the rows are in SQLite; a JSONL failure must not write them twice
                self.jsonl_lost += len(batch)
                if self._jsonl_log.due():  # a full disk fails every batch: once a minute is enough
                    log.exception("audit log: writing `%s` failed; %d lines lost so far (the rows are in SQLite; "
                                  "logged at most once a minute)", self.jsonl.path, self.jsonl_lost)  # fmt: skip
        return None

    def _table_of(self, conn: sqlite3.Connection, ts: float) -> str:
        """The table of the day of `ts`, made (with the view remade over it) if it is not there yet."""
        day = int(ts // DAY_S)
        table = day_table(day)
        if day not in self._days:
            with immediate(conn):  # another worker may be making it too: one of them does
                make_day_table(conn, day)
                remake_view(conn)
            self._days.add(day)
        if day * DAY_S >= self._today[0]:  # the newest day: where the next rows go
            self._today = (day * DAY_S, (day + 1) * DAY_S, table)
        return table

    def purge(self, conn: sqlite3.Connection) -> int:
        """Retention: drop each day whose every row has expired (its end is more than `retention_days` ago),
        and remake the view. The pre-0007 rows are deleted one by one as before (BackgroundWriter.purge, a
        chunk at a time; returns how many), and their table dropped once empty. One transaction, which
        takes the write lock before it looks at the tables: workers sharing the store purge in turn, and
        the second finds the first one's work done."""
        with immediate(conn):
            legacy, days = day_tables(conn)
            deleted = super().purge(conn) if legacy else 0
            more = deleted == self.purge_chunk  # more old rows to delete: the next round goes on, then drops
            cutoff = time.time() - self.retention_s
            expired = [] if more else [d for d in days if (d + 1) * DAY_S <= cutoff]
            empty = legacy and not more and conn.execute(f"SELECT 1 FROM {LEGACY} LIMIT 1").fetchone() is None
            for d in expired:
                conn.execute(f"DROP TABLE {day_table(d)}")  # its index goes with it
            if empty:
                conn.execute(f"DROP TABLE {LEGACY}")
            if expired or empty:
                remake_view(conn)
        self._days.difference_update(expired)
        if int(self._today[0] // DAY_S) in expired:
            self._today = (0.0, 0.0, "")
        return deleted
