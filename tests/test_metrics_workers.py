"""`turnout serve --workers 2` as a user runs it: a real server process with two uvicorn workers and the
fake upstream. Whichever worker answers `GET /metrics`, the page counts the whole server, and a worker
that dies takes none of its counts with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import GatewayFactory, UpstreamThread, base_config, free_port
from tests.test_metrics import HI, Page, promtool_accepts, sink
from turnout.telemetry.siblings import read_snapshot

REQUESTS = "turnout_requests_total"


class Server:
    def __init__(self, proc: subprocess.Popen[str], port: int, runtime: Path) -> None:
        self.proc, self.url, self.runtime = proc, f"http://127.0.0.1:{port}", runtime

    def directory(self) -> Path:
        """The server's snapshot directory: `<runtime_dir>/metrics/<master pid>-<random>`."""
        (found,) = (self.runtime / "metrics").glob(f"{self.proc.pid}-*")
        return found

    def published(self) -> dict[str, float]:
        """Requests counted in each snapshot file, by file name (a worker's pid, or `retired`)."""
        out = {}
        for path in (self.runtime / "metrics").glob(f"{self.proc.pid}-*/*.json"):
            snapshot = read_snapshot(path)
            if snapshot is not None:
                out[path.stem] = sum(value for _, value in snapshot["families"][REQUESTS])
        return out

    def workers(self) -> set[int]:
        return {int(pid) for pid in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()}

    def scrape(self) -> Page:
        r = httpx.get(self.url + "/metrics", timeout=10)  # a new connection: any worker may take it
        assert r.status_code == 200
        return Page(r.text)


def wait_for(what: str, done: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def server(tmp_path: Path, upstream: UpstreamThread) -> Iterator[Server]:
    runtime = tmp_path / "runtime"
    config = tmp_path / "turnout.yaml"
    config.write_text(yaml.safe_dump(base_config(upstream.url, runtime_dir=str(runtime))))
    port = free_port()
    command = [sys.executable, "-m", "turnout", "serve", "--config", str(config), "--port", str(port), "--workers", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    s = Server(proc, port, runtime)
    try:
        wait_for("both workers", lambda: proc.poll() is None and len(s.published()) == 2, seconds=30)
        yield s
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            out = proc.communicate(timeout=15)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
        assert "Traceback" not in out, out


def chat(server: Server, n: int) -> None:
    """`n` chat requests, eight at a time, each on a new connection, so both workers take some."""

    def one(_: int) -> None:
        r = httpx.post(server.url + "/v1/chat/completions", json={"model": "auto", "messages": HI}, timeout=10)
        assert r.status_code == 200

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))


def caught_up(server: Server, sent: int) -> dict[str, float]:
    """Wait until the snapshot files count all `sent` requests (each worker rewrites its own every
    second); then any scrape must count them all, and each worker's share is known."""
    wait_for("the snapshots to catch up", lambda: sum(server.published().values()) == sent)
    return server.published()


def test_every_scrape_counts_every_worker_and_a_dead_workers_counts_stay(server: Server) -> None:
    chat(server, 40)
    sent = 40
    per_worker = caught_up(server, sent)
    while not all(per_worker.values()) and sent < 200:  # the kernel picks the worker: rarely, one took all
        chat(server, 8)
        sent += 8
        per_worker = caught_up(server, sent)
    assert len(per_worker) == 2 and all(0 < n < sent for n in per_worker.values()), per_worker

    families = {f.name for f in sink().registry.collect()} - {"process_max_fds"}  # a one-process limit
    with ThreadPoolExecutor(4) as pool:  # concurrent scrapes: both workers answer some
        pages = list(pool.map(lambda _: server.scrape(), range(12)))
    for p in pages:  # each worker alone counted fewer than `sent`: every page added the other's
        assert p.total(REQUESTS) == sent
        assert p.get(REQUESTS, endpoint="chat", router="auto", route="lite", model="lite-model", status="200") == sent
        assert p.total("turnout_request_duration_seconds_count") == sent
        assert p.get("turnout_request_duration_seconds_bucket", route="lite", stream="false", le="+Inf") == sent
        assert p.get("turnout_tokens_total", model="lite-model", direction="input", source="reported") == 8 * sent
        assert p.get("turnout_active_streams") == 0
        assert {f.name for f in p.families} == families
    promtool_accepts(pages[0])  # the page summed over the workers

    # The process series are the server's: memory summed over both workers, CPU seconds over every worker.
    workers = server.workers()
    rss = sum(int(Path(f"/proc/{pid}/statm").read_text().split()[1]) for pid in workers) * os.sysconf("SC_PAGE_SIZE")
    page = server.scrape()
    assert 0.8 * rss < page.get("process_resident_memory_bytes") < 1.25 * rss
    assert page.get("process_open_fds") > 2 * 3
    assert page.get("process_max_fds") == 0  # a per-process limit: left out of a server's page
    starts = [Path(f"/proc/{pid}").stat().st_mtime for pid in workers]
    assert page.get("process_start_time_seconds") <= min(starts) + 1  # the oldest worker's
    cpu = page.get("process_cpu_seconds_total")
    assert cpu > 0
    rows = "turnout_log_rows_total"  # each worker's audit writer, summed
    wait_for("the audit rows", lambda: server.scrape().get(rows, log="audit", outcome="written") == sent)
    assert page.get(rows, log="audit", outcome="dropped") == 0
    assert ("turnout_log_queue_rows", frozenset({("log", "audit")})) in page.series  # summed over the live workers

    # A worker killed outright: its last snapshot is folded into the retired totals, and its replacement
    # starts from zero.
    victim = int(max(per_worker, key=lambda pid: per_worker[pid]))
    assert victim in server.workers()
    os.kill(victim, signal.SIGKILL)
    wait_for("the worker to be gone", lambda: victim not in server.workers())
    for _ in range(5):
        again = server.scrape()
        assert again.total(REQUESTS) == sent
        assert again.get("process_cpu_seconds_total") >= cpu  # the dead worker's CPU seconds stay
    assert server.published()["retired"] == per_worker[str(victim)]
    wait_for("a replacement worker", lambda: len(server.published()) == 3)  # two workers and `retired`
    chat(server, 16)
    sent += 16
    caught_up(server, sent)
    for _ in range(5):
        assert server.scrape().total(REQUESTS) == sent

    directory = server.directory()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(15)
    assert not directory.exists()  # the master removes its directory when it stops


def test_one_worker_writes_no_snapshots(make_gateway: GatewayFactory) -> None:
    gw = make_gateway()
    httpx.post(gw.url + "/v1/chat/completions", json={"model": "auto", "messages": HI})
    assert httpx.get(gw.url + "/metrics").status_code == 200
    assert not (Path(gw.app.settings.runtime_dir) / "metrics").exists()


def test_an_unwritable_runtime_dir_stops_several_workers_before_they_start(
    tmp_path: Path, upstream: UpstreamThread
) -> None:
    runtime = tmp_path / "not-a-directory"
    runtime.write_text("")
    config = tmp_path / "turnout.yaml"
    config.write_text(yaml.safe_dump(base_config(upstream.url, runtime_dir=str(runtime))))
    done = subprocess.run([sys.executable, "-m", "turnout", "serve", "--config", str(config), "--port",
                           str(free_port()), "--workers", "2"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("turnout: runtime_dir: cannot make the directory") and "Traceback" not in done.stderr
