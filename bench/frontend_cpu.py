"""The frontend's CPU per request, A/B: frontends from given code trees beside bench.nothing.

Against a live `bench/run.py --serve` world: rounds of wrk c=16, CPU from /proc (see --help).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench import load
from bench.world import PY, ROOT, _accepts, cpu_seconds, free_port


def start(argv: list[str], tree: str, port: int, log: Any) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": tree, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen(argv, cwd=tree, env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 20
    while not _accepts(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{argv} did not start")
        time.sleep(0.02)
    return proc


def frontend(config: str, tree: str, log: Any) -> tuple[subprocess.Popen[bytes], int]:
    """A frontend from `tree` on a free port, with a copy of `config` naming that port."""
    port = free_port()
    with open(config) as f:
        text = re.sub(r"(?m)^port = \d+$", f"port = {port}", f.read())
    path = f"{config}.{port}.toml"
    with open(path, "w") as f:
        f.write(text)
    return start([PY, "-m", "frontend", "--config", path], tree, port, log), port


@dataclass
class Sample:
    rps: float
    cpu_us: float  # the server's CPU per request
    helper_us: float | None  # the helper's, when its pid was given


def measure(pid: int, port: int, path: str, token: str, seconds: float,
            helper: int | None) -> Sample:
    """One wrk c=16 run, and the CPU the server (and the helper) spent per request."""
    before = cpu_seconds(pid)
    helper_before = cpu_seconds(helper) if helper else 0.0
    result = load.wrk(port, [path], token, 16, seconds)
    used = cpu_seconds(pid) - before
    if result.other or result.socket_errors:
        raise RuntimeError(f"{path}: {result.other} bad statuses, {result.socket_errors} errors")
    n = max(1, result.requests)
    return Sample(result.rps, used * 1e6 / n,
                  (cpu_seconds(helper) - helper_before) * 1e6 / n if helper else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, epilog=(
        "Each tree (a copy of the repository, e.g. from git archive) gets a frontend of its "
        "own on a free port with the world's config; every round runs wrk on each route of "
        "each frontend and on the do-nothing server, and counts utime+stime per request."))
    parser.add_argument("--config", required=True, help="the live world's lwp.toml")
    parser.add_argument("--token", required=True, help="an admin token of that world")
    parser.add_argument("--tree", action="append", help="code tree(s) to compare (default: .)")
    parser.add_argument("--path", action="append", help="routes (default: the token list)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--helper-pid", type=int, help="also count the helper's CPU per request")
    args = parser.parse_args()
    trees = args.tree or [ROOT]
    paths = args.path or ["/api/v1/tokens"]
    procs: list[subprocess.Popen[bytes]] = []
    # A real file, as in the benchmark: the access log's writes are part of the cost.
    with open(f"{args.config}.frontends.log", "ab") as log:
        try:
            nport = free_port()
            procs.append(start([PY, "-m", "bench.nothing", str(nport)], ROOT, nport, log))
            targets = {"nothing": (procs[-1].pid, nport, ["/"])}
            for tree in trees:
                proc, port = frontend(args.config, tree, log)
                procs.append(proc)
                targets[tree] = (proc.pid, port, paths)
            runs: dict[tuple[str, str], list[Sample]] = {}
            for _ in range(args.rounds):
                for name, (pid, port, routes) in targets.items():
                    for path in routes:
                        runs.setdefault((name, path), []).append(
                            measure(pid, port, path, args.token, args.seconds,
                                    None if name == "nothing" else args.helper_pid))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(20)
    report(runs, trees[0])
    return 0


def report(runs: dict[tuple[str, str], list[Sample]], first: str) -> None:
    """Medians, and each tree's CPU beside the first tree's in the same round (the machine's
    drift between rounds is larger than most changes; within a round it hits both alike)."""
    base = statistics.median(r.rps for r in runs[("nothing", "/")])
    for (name, path), samples in runs.items():
        rps = statistics.median(r.rps for r in samples)
        line = (f"{name:28.28s} {path:28s} {rps:6.0f} req/s {rps / base:6.1%} of nothing  "
                f"{statistics.median(r.cpu_us for r in samples):4.0f} µs CPU/req")
        helper = [r.helper_us for r in samples if r.helper_us is not None]
        if helper:
            line += f" (helper {statistics.median(helper):4.0f})"
        if name not in ("nothing", first):
            deltas = [r.cpu_us - r0.cpu_us
                      for r, r0 in zip(samples, runs[(first, path)], strict=True)]
            line += (f"  vs first tree, paired: {statistics.median(deltas):+4.0f} µs "
                     f"({', '.join(f'{d:+.0f}' for d in deltas)})")
        print(line)


if __name__ == "__main__":
    sys.exit(main())
