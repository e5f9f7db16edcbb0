#!/usr/bin/env python3
"""Telemetry overhead as instructions per request, counted by valgrind (prints numbers; not a test).

    /tmp/peer-venv-bench/bin/python bench/telemetry_instr.py [--requests 2000] [--stream] [--parts] [--other TURNOUT]

CPU time per request on a shared VM drifts by more than the effect measured here, even interleaved
(`telemetry_ab.py`: its rounds of the same config differ by 10-30 % on the 2-core EPYC VM). The number of
instructions the gateway executes per request does not drift: this runs each config's gateway under
valgrind's callgrind with counting off, sends a warm-up burst, turns counting on for `--requests` requests
(every thread: the audit writer included), and prints instructions per request. Run it twice and the
numbers agree to about 1 %.

Under valgrind the gateway runs ~50x slower, so the time limits on batches (a record waits at most
`telemetry.batch_delay_s` for 127 others; an audit row `telemetry.audit.flush_s` for 255 others) would
cut them to a few records each, where at full speed under this load they fill by count: the per-batch
work would then count as per-request work. So the configs raise both limits (`--batch-delay`, default
5 s, and 30 s); 0 keeps them as they are (needed for builds older than `telemetry.batch_delay_s`).

What it does not see: time in the kernel (socket syscalls are a good part of the core's CPU, so telemetry
is a larger share of the instructions than of the CPU time), and cache misses (a batch of records is
cheaper in cycles than its instructions say, docs/metrics.md). Read it beside `telemetry_ab.py`.

`--breakdown` also prints where the added instructions run: per thread (the event loop, the audit log's
writer) and per shared object (the interpreter, SQLite, orjson, libc), from callgrind's files. Stop 16
used it to decide against compiling the telemetry modules with mypyc: on the EPYC VM, of ~65,000
instructions added per JSON request, ~50,600 are in libpython, ~5,200 in SQLite, ~3,900 in orjson and
~4,600 in libc; ~19,500 run on the audit writer's thread. mypyc (telemetry modules, record and types)
moved the total by under 2,000, since most of the interpreter's share is generic dict, tuple and call
work that compiled code does through the same C API.

Configs are bench/turnout-bench.yaml (`full`: metrics and audit log) and bench/turnout-bench-bare.yaml
(`bare`: telemetry off) without the `smart` router, whose encoder takes minutes to load under valgrind;
the model is `lite` (an explicit route) on gatebench's fake upstream. `--other` also runs both configs on
another build (a commit unpacked as bench/README.md shows). Needs valgrind: `sh bench/setup.sh` installs it.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from telemetry_ab import read, wait_ready  # a sibling script: bench/ is on sys.path when run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UP_PORT, GW_PORT = 18400, 18401


def light_config(name: str, work: str, tag: str | None = None, extra: str = "") -> str:
    """The bench config `name` without the `smart` router (its block of lines), plus `extra` lines, with a
    runtime directory of its own; written as `tag` (default: `name`)."""
    path = os.path.join(work, tag or name)
    with open(path, "w") as f:
        f.write(read(os.path.join(REPO, "bench", name)) + f"{extra}runtime_dir: {path}.rt\n")
    return path


def burst(a: argparse.Namespace, n: int) -> int:
    cmd = [a.python, os.path.join(a.gatebench, "loadgen.py"), f"http://127.0.0.1:{GW_PORT}", "--model", a.model,
           "-c", str(a.conc), "-n", str(n), "-d", "900"] + ["--stream"] * a.stream  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    r = json.loads(next(x for x in out.splitlines() if x.startswith("GATEBENCH "))[10:])
    if r.get("errors"):
        raise RuntimeError(f"errors in a burst: {r['errors']}")
    return int(r["requests"])


def self_cost(path: str) -> tuple[int, dict[str, int]]:
    """(thread number, {shared object: instructions run in it}) of one callgrind file. Costs after a
    `calls=` line are the callee's inclusive cost and are skipped; names may first appear on `cob=` lines."""
    names: dict[str, str] = {}
    per: dict[str, int] = {}
    thread, current, skip = 1, "?", False
    with open(path) as f:
        for line in f:
            if line.startswith(("ob=", "cob=")):
                ref, _, name = line.split("=", 1)[1].strip().partition(" ")
                if name:
                    names[ref] = name
                if line.startswith("ob="):
                    current = names.get(ref, ref)
            elif line.startswith("thread:"):
                thread = int(line.split()[1])
            elif line.startswith("calls="):
                skip = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                if skip:
                    skip = False
                    continue
                parts = line.split()
                if len(parts) >= 2:
                    per[current] = per.get(current, 0) + int(parts[1])
    return thread, per


def breakdown(work: str, tag: str, done: int) -> dict[str, float]:
    """Instructions per request by thread (`thread 1` is the event loop) and by shared object's file name."""
    out: dict[str, float] = {}
    for path in glob.glob(os.path.join(work, f"callgrind.{tag}.*")):  # the dump, not the start-up part
        thread, per = self_cost(path)
        for obj, n in per.items():
            name = os.path.basename(obj).split(".cpython")[0].split(".so")[0]
            out[f"thread {thread}"] = out.get(f"thread {thread}", 0) + n / done
            out[name] = out.get(name, 0) + n / done
    return out


def count(a: argparse.Namespace, turnout: str, config: str, work: str, tag: str) -> float:
    """Instructions per request of `turnout serve --config config` under load."""
    out = os.path.join(work, f"callgrind.{tag}")
    env = dict(os.environ, TURNOUT_BENCH_UPSTREAM=f"http://127.0.0.1:{UP_PORT}/v1")
    cmd = ["valgrind", "--tool=callgrind", "--trace-children=yes", "--instr-atstart=no", f"--callgrind-out-file={out}",
           *(["--separate-threads=yes"] if a.breakdown else []),
           turnout, "serve", "--config", config, "--port", str(GW_PORT)]  # fmt: skip
    with open(os.path.join(work, f"{tag}.log"), "wb") as log:
        gw = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            if not wait_ready(f"http://127.0.0.1:{GW_PORT}", 600):
                raise SystemExit(f"the gateway under valgrind did not start in 600 s; see {work}/{tag}.log")
            burst(a, a.warmup)
            subprocess.run(["callgrind_control", "-i", "on", str(gw.pid)], check=True, capture_output=True)
            done = burst(a, a.requests)
            subprocess.run(["callgrind_control", "-i", "off", str(gw.pid)], check=True, capture_output=True)
            subprocess.run(["callgrind_control", "-d", str(gw.pid)], check=True, capture_output=True)
        finally:
            os.killpg(gw.pid, signal.SIGTERM)
            gw.wait(120)
    total = 0
    for path in glob.glob(out + "*"):
        with open(path) as f:
            for line in f:
                if line.startswith("totals:"):
                    total += int(line.split()[1])
    if a.breakdown:
        a.parts_of[tag] = breakdown(work, tag, done)
    return total / done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000, help="requests counted per config")
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--conc", type=int, default=64)
    ap.add_argument("--stream", action="store_true", help="SSE (16 chunks) instead of JSON")
    ap.add_argument("--parts", action="store_true", help="also metrics alone and the audit log alone")
    ap.add_argument("--batch-delay", type=float, default=5.0, help="telemetry.batch_delay_s; 0: as configured")
    ap.add_argument("--model", default="lite")
    ap.add_argument("--turnout", default=os.path.join(REPO, ".venv", "bin", "turnout"))
    ap.add_argument("--other", metavar="TURNOUT", help="also both configs on another turnout build")
    ap.add_argument("--gatebench", default=os.path.join(os.path.dirname(REPO), "shared", "gatebench"))
    ap.add_argument("--python", default=sys.executable, help="python with httptools/uvloop (gatebench's)")
    ap.add_argument("--breakdown", action="store_true", help="also the added instructions per thread and per library")
    ap.add_argument("--keep", metavar="DIR", help="copy callgrind's files here (callgrind_annotate reads them)")
    a = ap.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: run `sh bench/setup.sh`")

    a.parts_of = {}  # tag -> breakdown(), with --breakdown
    work = tempfile.mkdtemp(prefix="turnout-instr-")
    full = "telemetry:\n" + (f"  batch_delay_s: {a.batch_delay}\n" if a.batch_delay else "")
    full += "  audit:\n    flush_s: 30\n"  # the last block: `metrics` adds `enabled: false` to it

    def configs(where: str) -> dict[str, str]:
        """The configs, in a folder of their own per build: an older build cannot open an audit store that
        a newer one migrated."""
        os.makedirs(where, exist_ok=True)
        out = {
            "bare": light_config("turnout-bench-bare.yaml", where),
            "full": light_config("turnout-bench.yaml", where, extra=full),
        }
        if a.parts:
            out["metrics"] = light_config("turnout-bench.yaml", where, "metrics.yaml", full + "    enabled: false\n")
            off = full + "  metrics:\n    enabled: false\n"
            out["audit"] = light_config("turnout-bench.yaml", where, "audit.yaml", off)
        return out

    builds = {"": a.turnout, **({"other ": a.other} if a.other else {})}
    files = {prefix: configs(os.path.join(work, prefix.strip() or "this")) for prefix in builds}
    names = list(files[""])
    with open(os.path.join(work, "upstream.log"), "wb") as log:
        up = subprocess.Popen([a.python, os.path.join(a.gatebench, "fake_upstream.py"), "--port", str(UP_PORT)],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    per: dict[str, float] = {}
    try:
        for prefix, exe in builds.items():
            for name, config in files[prefix].items():
                tag = (prefix + name).replace(" ", "-")
                per[prefix + name] = count(a, exe, config, work, tag)
                print(f"{prefix + name:<11} {per[prefix + name]:>12,.0f} instructions per request", flush=True)
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(15)
    kind = "SSE (16 chunks)" if a.stream else "JSON"
    print(f"\n{kind}, model `{a.model}`, c={a.conc}, {a.requests} requests counted per config (valgrind callgrind)")
    for prefix in builds:
        bare = per[prefix + "bare"]
        for name in names:
            if name != "bare":
                added, label = per[prefix + name] - bare, "telemetry" if name == "full" else name
                print(f"{prefix + label:<16} {added:>10,.0f} instructions per request = {100 * added / bare:+.1f} %")
    if a.breakdown:
        for prefix in builds:
            bare = a.parts_of[(prefix + "bare").replace(" ", "-")]
            for name in names:
                if name == "bare":
                    continue
                part = a.parts_of[(prefix + name).replace(" ", "-")]
                print(f"\n{prefix + name}: instructions per request added, by thread and by library")
                added = {k: part.get(k, 0) - bare.get(k, 0) for k in set(part) | set(bare)}
                for k, v in sorted(added.items(), key=lambda kv: (not kv[0].startswith("thread"), -abs(kv[1]))):
                    if abs(v) >= 100:
                        print(f"  {k:<28} {v:>10,.0f}")
    if a.other:
        for name in names:
            print(f"{name} vs other {name}: {100 * (per[name] / per['other ' + name] - 1):+.1f} %")
    if a.keep:
        os.makedirs(a.keep, exist_ok=True)
        for path in glob.glob(os.path.join(work, "callgrind.*")):
            shutil.copy(path, a.keep)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
