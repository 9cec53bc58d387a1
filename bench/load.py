"""Load with wrk (Debian's package) against 127.0.0.1 only, and the numbers it reports.

A generated Lua script rotates over the given paths, tallies response statuses per thread and
prints one machine-readable summary line; wrk itself runs one thread (the machine has two
cores and the daemons under test need them more than the load generator does).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

MARK = "LWPJSON "
SCRIPT = """
wrk.headers["Private-Token"] = "%(token)s"
local paths = {%(paths)s}
local i = 0
ok, missing, other = 0, 0, 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end

response = function(status, headers, body)
  if status == 200 then ok = ok + 1
  elseif status == 404 then missing = missing + 1
  else other = other + 1 end
end

done = function(summary, latency, requests)
  local t = {ok = 0, missing = 0, other = 0}
  for _, th in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + th:get(k) end
  end
  local e = summary.errors
  io.write(string.format(
    '%(mark)s{"requests": %%d, "duration_us": %%d, "ok": %%d, "missing": %%d, "other": %%d, '
    .. '"socket_errors": %%d, "p50_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration, t.ok, t.missing, t.other,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Load:
    requests: int
    seconds: float
    ok: int
    missing: int  # 404s, when the paths ask for them on purpose
    other: int  # any other status: an error the run reports
    socket_errors: int
    p50_ms: float
    p99_ms: float
    # CPU each daemon spent per request meanwhile (filled in by the caller, which knows them)
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def available() -> bool:
    return shutil.which("wrk") is not None


def wrk(port: int, paths: list[str], token: str, connections: int, seconds: float) -> Load:
    """`connections` keep-alive connections for `seconds`, rotating over `paths`."""
    if any('"' in p or "\\" in p for p in paths) or '"' in token or "\\" in token:
        raise ValueError("paths and token go into a Lua string literal unescaped")
    text = SCRIPT % {"token": token, "paths": ", ".join(f'"{p}"' for p in paths),
                     "mark": MARK}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(text)
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "60s",
             "-s", f.name, f"http://127.0.0.1:{port}{paths[0]}"],
            check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=seconds + 120).stdout
    finally:
        os.unlink(f.name)
    for line in out.splitlines():
        if line.startswith(MARK):
            d = json.loads(line[len(MARK):])
            return Load(d["requests"], d["duration_us"] / 1e6, d["ok"], d["missing"],
                        d["other"], d["socket_errors"], d["p50_us"] / 1000, d["p99_us"] / 1000)
    raise RuntimeError(f"wrk printed no summary:\n{out}")
