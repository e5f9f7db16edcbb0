#!/usr/bin/env python3
"""Telemetry overhead end to end, as an interleaved A/B: gateway CPU per request, telemetry on vs off.

    /tmp/peer-venv-bench/bin/python bench/telemetry_ab.py [--rounds 20] [--requests 2000] [--stream] [--blocks 1]
    /tmp/peer-venv-bench/bin/python bench/telemetry_ab.py --together --blocks 10 --rounds 40 [--stream] [--parts]

The second form is the one to trust on a shared VM: its 95 % interval is about a point wide (below).

`gatebench.py --telemetry-overhead` runs `turnout` and `turnout-bare` seconds apart, one after the other;
on a shared 2-core VM the gateway's CPU per request drifts by 20-40 % between such runs (steal time,
neighbours, frequency), more than the effect measured. Here every config runs as its own server, all
started at once and pinned to the same core, and short bursts of the same load go to each in turn,
round after round (the order rotates): a drift hits every config alike, and the ratio of their CPU per
request is what is left. CPU is read from /proc/PID/task/*/schedstat (nanoseconds, every thread: the
audit writer included).

Layout as gatebench's compare.py: the gateways on cpu 0, gatebench's fake upstream and its load
generator (loadgen.py, keep-alive, `--conc` connections) on cpu 1. Configs: `bare` (bench/
turnout-bench-bare.yaml: no metrics, no audit log), `full` (bench/turnout-bench.yaml: metrics + audit),
and with `--parts` also `metrics` and `audit` alone, each without the `smart` router (unused here). The
model is `lite` (an explicit route).

A process's own memory layout can shift its CPU per request by 5-10 % for as long as it runs (two `bare`
servers of the same build differed by that much over 50 rounds on the EPYC VM), which more rounds do not
average out: `--blocks N` splits the rounds over N fresh sets of servers, and with more than one block
the end of the output gives each config's mean ratio to `bare` over blocks with a 95 % interval.

Rounds of one config on the EPYC VM range over 2x (0.14-0.35 ms per stream in one run): something the
VM shares (a neighbour on the same physical core, say) slows everything for seconds at a time, and a
burst that falls into such a moment skews its round's ratio. `--together` loads every config at once
for `--seconds` per round, each gateway from a load generator of its own (all of them on the bench cpus,
the gateways sharing theirs): every config then runs through the same moments.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import IO

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UP_PORT, FIRST_PORT = 18100, 18101


def task_cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid`, in ns (schedstat's first field)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:  # a thread that just ended
            continue
    return total


def wait_ready(url: str, timeout: float = 120) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        try:
            if urllib.request.urlopen(url + "/health", timeout=5).status == 200:
                return True
        except OSError:
            time.sleep(0.3)
    return False


def start(cmd: list[str], cpus: str, log: IO[bytes], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["taskset", "-c", cpus, *cmd], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def read(path: str) -> str:
    """A bench config without its `smart` router (its block of lines): the model here is `lite`, and the
    router's encoder would take every fresh server ~20 s to load."""
    with open(path) as f:
        lines = f.read().splitlines()
    kept, skipping = [], False
    for line in lines:
        if line.startswith("  smart:"):
            skipping = True
        elif skipping and not line.startswith("    "):
            skipping = False
        if not skipping:
            kept.append(line)
    return "\n".join(kept) + "\n"


def configs(parts: bool, work: str) -> dict[str, str]:
    """name -> config file, each a copy with a runtime directory (audit file) of its own. `metrics` and
    `audit` are the full config with the other sink turned off."""
    bench = os.path.join(REPO, "bench")
    os.makedirs(work, exist_ok=True)
    full = read(os.path.join(bench, "turnout-bench.yaml"))
    texts = {"bare": read(os.path.join(bench, "turnout-bench-bare.yaml")), "full": full}
    if parts:
        for name, off in (("metrics", "audit"), ("audit", "metrics")):
            texts[name] = full + f"telemetry:\n  {off}:\n    enabled: false\n"
    out = {}
    for name, text in texts.items():
        out[name] = path = os.path.join(work, f"{name}.yaml")
        with open(path, "w") as f:
            f.write(text + f"runtime_dir: {os.path.join(work, name)}\n")
    return out


def start_servers(
    a: argparse.Namespace, variants: list[tuple[str, str, str]], log: IO[bytes], work: str
) -> dict[str, tuple[int, int, subprocess.Popen[bytes]]]:
    """Every config's gateway, all at once on the gateway cpus, ready and warmed up: name -> (port, pid,
    process)."""
    servers: dict[str, tuple[int, int, subprocess.Popen[bytes]]] = {}
    try:
        for i, (name, exe, conf) in enumerate(variants):
            port = FIRST_PORT + i
            env = dict(os.environ, TURNOUT_BENCH_UPSTREAM=f"http://127.0.0.1:{UP_PORT}/v1")
            p = start([exe, "serve", "--config", conf, "--port", str(port)], a.gw_cpus, log, env)
            servers[name] = (port, p.pid, p)
        for name, (port, _, _) in servers.items():
            if not wait_ready(f"http://127.0.0.1:{port}"):
                raise SystemExit(f"{name} did not start; see {work}/servers.log")
        for port, pid, _ in servers.values():  # warm-up: connections, caches, the first audit batches
            burst(a, port, pid, a.requests // 2)
    except BaseException:
        for _, _, p in servers.values():
            stop(p)
        raise
    return servers


def loadgen(a: argparse.Namespace, port: int, n: int, seconds: float = 60) -> list[str]:
    """gatebench's load generator against one gateway: n requests or `seconds`, whichever ends first."""
    return [a.python, os.path.join(a.gatebench, "loadgen.py"), f"http://127.0.0.1:{port}", "--model", a.model,
            "-c", str(a.conc), "-n", str(n), "-d", str(seconds)] + ["--stream"] * a.stream  # fmt: skip


def result(out: str, port: int) -> tuple[int, float, float]:
    """(requests answered, latency p50 ms, p99 ms) from loadgen's output; errors raise."""
    line = next(x for x in out.splitlines() if x.startswith("GATEBENCH "))
    r = json.loads(line[10:])
    if r.get("errors"):
        raise RuntimeError(f"errors in a burst on :{port}: {r['errors']}")
    return r["requests"], r["lat_ms"]["p50"], r["lat_ms"]["p99"]


def burst(a: argparse.Namespace, port: int, pid: int, n: int) -> tuple[int, int, float, float]:
    """(requests answered, gateway CPU ns, latency p50 ms, latency p99 ms) for one burst of n requests."""
    c0 = task_cpu_ns(pid)
    cmd = ["taskset", "-c", a.bench_cpus, *loadgen(a, port, n)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    c1 = task_cpu_ns(pid)
    done, p50, p99 = result(out, port)
    return done, c1 - c0, p50, p99


def together(
    a: argparse.Namespace, servers: dict[str, tuple[int, int, subprocess.Popen[bytes]]]
) -> dict[str, tuple[int, int, float, float]]:
    """`--together`: every gateway loaded at once for `--seconds`, each by a load generator of its own, so
    that all of them run through the same moments of the VM (a busy neighbour, a frequency step): name ->
    burst's tuple."""
    c0 = {name: task_cpu_ns(pid) for name, (_, pid, _) in servers.items()}
    procs = {}
    for name, (port, _, _) in servers.items():
        cmd = ["taskset", "-c", a.bench_cpus, *loadgen(a, port, 10**9, a.seconds)]
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    outs = {name: p.communicate()[0] for name, p in procs.items()}
    c1 = {name: task_cpu_ns(pid) for name, (_, pid, _) in servers.items()}
    out = {}
    for name, (port, _, _) in servers.items():
        if procs[name].returncode:
            raise RuntimeError(f"the load generator for :{port} failed")
        done, p50, p99 = result(outs[name], port)
        out[name] = (done, c1[name] - c0[name], p50, p99)
    return out


# Student's t, two-sided 95 %, by degrees of freedom (1-30); beyond 30 the normal 1.96 is close enough.
T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def block_interval(blocks: list[dict[str, list[int]]], name: str, base: str) -> str:
    """`name`'s CPU per request over `base`'s, one ratio per block of fresh servers, as the mean with a 95 %
    confidence interval (t over blocks) and the ratios themselves. A server process keeps its memory
    layout's luck for as long as it runs, so rounds within a block are not independent; blocks are."""
    ratios = [b[name][1] / b[name][0] / (b[base][1] / b[base][0]) - 1 for b in blocks]
    mean = statistics.fmean(ratios)
    half = T95[len(ratios) - 2] if len(ratios) <= len(T95) + 1 else 1.96
    half *= statistics.stdev(ratios) / len(ratios) ** 0.5
    each = " ".join(f"{100 * x:+.1f}" for x in ratios)
    return f"{100 * mean:+.1f}% [{100 * (mean - half):+.1f}%, {100 * (mean + half):+.1f}%]   blocks: {each}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--requests", type=int, default=2000, help="requests per burst")
    ap.add_argument("--conc", type=int, default=64)
    ap.add_argument("--stream", action="store_true", help="SSE (16 chunks) instead of JSON")
    ap.add_argument("--parts", action="store_true", help="also metrics alone and the audit log alone")
    ap.add_argument("--blocks", type=int, default=1, help="split the rounds over this many fresh sets of server "
                    "processes (a process's own memory layout can shift its CPU per request by 5-10 %%)")  # fmt: skip
    ap.add_argument("--model", default="lite")
    ap.add_argument("--turnout", default=os.path.join(REPO, ".venv", "bin", "turnout"))
    ap.add_argument("--other", metavar="TURNOUT", help="also `obare` and `other`: the bare and full configs on "
                    "another turnout build (a commit unpacked as bench/README.md shows), to compare two builds in "
                    "one interleaved run")  # fmt: skip
    ap.add_argument("--gatebench", default=os.path.join(os.path.dirname(REPO), "shared", "gatebench"))
    ap.add_argument("--python", default=sys.executable, help="python with httptools/uvloop (gatebench's)")
    ap.add_argument("--together", action="store_true", help="load every config at once in each round (for "
                    "--seconds), not one after the other: see the module's docstring")  # fmt: skip
    ap.add_argument("--seconds", type=float, default=2.0, help="a round's length with --together")
    ap.add_argument("--gw-cpus", default="0")
    ap.add_argument("--bench-cpus", default="1")
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="turnout-ab-")
    log = open(os.path.join(work, "servers.log"), "wb")  # noqa: SIM115 (open while the servers run)
    variants = [(name, a.turnout, conf) for name, conf in configs(a.parts, work).items()]
    if a.other:
        theirs = configs(False, os.path.join(work, "other"))
        variants += [("obare", a.other, theirs["bare"]), ("other", a.other, theirs["full"])]
    names = [name for name, _, _ in variants]
    cpu: dict[str, list[float]] = {n: [] for n in names}  # ms per request, per round
    p50: dict[str, list[float]] = {n: [] for n in names}  # latency p50 ms, per round
    p99: dict[str, list[float]] = {n: [] for n in names}
    totals = {n: [0, 0] for n in names}
    blocks: list[dict[str, list[int]]] = []  # per block: name -> [requests, CPU ns]
    up = start([a.python, os.path.join(a.gatebench, "fake_upstream.py"), "--port", str(UP_PORT)], a.bench_cpus, log)
    try:
        r = 0
        for block in range(a.blocks):  # fresh server processes per block: see --blocks
            servers = start_servers(a, variants, log, work)
            blocks.append({n: [0, 0] for n in names})
            try:
                for _ in range(a.rounds // a.blocks + (block < a.rounds % a.blocks)):
                    order = names[r % len(names) :] + names[: r % len(names)]
                    if a.together:
                        measured = together(a, servers)
                    else:
                        measured = {name: burst(a, *servers[name][:2], a.requests) for name in order}
                    for name in names:
                        done, ns, lat, tail = measured[name]
                        cpu[name].append(ns / 1e6 / done)
                        p50[name].append(lat)
                        p99[name].append(tail)
                        for tally in (totals[name], blocks[-1][name]):
                            tally[0] += done
                            tally[1] += ns
                    r += 1
                    print(f"round {r:>3}: " + "  ".join(f"{n} {cpu[n][-1]:.4f}" for n in names), flush=True)
            finally:
                for _, _, p in servers.values():
                    stop(p)
    finally:
        stop(up)
        log.close()
    kind = "SSE (16 chunks)" if a.stream else "JSON"
    each = f"{a.seconds:g} s, every config at once" if a.together else f"{a.requests} requests per config"
    print(f"\n{kind}, model `{a.model}`, c={a.conc}, {a.rounds} rounds of {each}")
    print(f"{'config':<8} {'ms/req (all)':>13} {'median':>8} {'vs bare (all)':>14} {'median of round ratios':>23} "
          f"{'latency p50 ms':>15} {'p99 ms':>7}")  # fmt: skip
    base_all = totals["bare"][1] / 1e6 / totals["bare"][0]
    for n in names:
        all_ms = totals[n][1] / 1e6 / totals[n][0]
        ratios = [x / b for x, b in zip(cpu[n], cpu["bare"], strict=True)]
        print(
            f"{n:<8} {all_ms:>13.4f} {statistics.median(cpu[n]):>8.4f} {100 * (all_ms / base_all - 1):>+13.1f}% "
            f"{100 * (statistics.median(ratios) - 1):>+22.1f}% {statistics.median(p50[n]):>15.3f}"
            f" {statistics.median(p99[n]):>7.3f}"
        )
    if len(blocks) > 1:
        print(f"\nper block ({len(blocks)} fresh sets of servers): CPU per request vs bare, mean and 95 % interval")
        for n in names[1:]:
            print(f"{n:<8} {block_interval(blocks, n, 'bare')}")
    if "obare" in totals:
        for n, base in (("full", "bare"), ("other", "obare"), ("full", "other"), ("bare", "obare")):
            ratio = totals[n][1] / totals[n][0] / (totals[base][1] / totals[base][0])
            rounds = statistics.median(x / b for x, b in zip(cpu[n], cpu[base], strict=True))
            print(f"{n} vs {base}: {100 * (ratio - 1):+.1f}% (all), {100 * (rounds - 1):+.1f}% (median of rounds)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
