"""Rows of the result table: what was compared with what, the ratio, the target and the verdict.

Targets are the issue's and live only here. A row without a target is information (verdict
"-"); a timing never fails the run, only an error does.
"""
from __future__ import annotations

import json
import operator
from collections.abc import Callable
from typing import Any

from bench.measure import summary

Row = dict[str, Any]
COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt}


def _verdict(value: float, target: tuple[str, float] | None) -> str:
    if target is None:
        return "-"
    op, limit = target
    return "PASS" if COMPARE[op](value, limit) else "MISS"


def latency(what: str, base: list[float], api: list[float],
            target: tuple[str, float] | None = None, base_label: str = "direct") -> Row:
    """API median over the base's median (a time: lower is better)."""
    b, a = summary(base), summary(api)
    ratio = a["median_ms"] / b["median_ms"]
    return {"kind": "latency", "what": what, "base_label": base_label, "base": b, "api": a,
            "ratio": ratio, "p99_ratio": a["p99_ms"] / b["p99_ms"],
            "target": _target_text(target, "x"), "verdict": _verdict(ratio, target)}


def throughput(what: str, base_rps: float, api_rps: float,
               target: tuple[str, float] | None = None, base_label: str = "direct",
               detail: dict[str, Any] | None = None) -> Row:
    """API requests/s over the base's (a rate: higher is better)."""
    ratio = api_rps / base_rps
    return {"kind": "throughput", "what": what, "base_label": base_label,
            "base": {"rps": base_rps}, "api": {"rps": api_rps}, "ratio": ratio,
            "target": _target_text(target, "x"), "verdict": _verdict(ratio, target),
            "detail": detail or {}}


def tail(what: str, quiet: list[float], loaded: list[float],
         target: tuple[str, float] | None = None) -> Row:
    """p99 with the load over p99 without it."""
    q, lo = summary(quiet), summary(loaded)
    ratio = lo["p99_ms"] / q["p99_ms"]
    return {"kind": "tail", "what": what, "base_label": "without", "base": q, "api": lo,
            "ratio": ratio, "target": _target_text(target, "x"),
            "verdict": _verdict(ratio, target)}


def amount(what: str, mib: float, target: tuple[str, float] | None = None) -> Row:
    return {"kind": "amount", "what": what, "value_mib": mib,
            "target": _target_text(target, " MiB"), "verdict": _verdict(mib, target)}


def _target_text(target: tuple[str, float] | None, unit: str) -> str:
    return "" if target is None else f"{target[0]} {target[1]:g}{unit}"


# -- printing -----------------------------------------------------------------------------

def _cells(row: Row) -> tuple[str, str, str]:
    kind = row["kind"]
    if kind in ("latency", "tail"):
        b, a = row["base"], row["api"]
        return (f"{b['median_ms']:.2f} / {b['p99_ms']:.2f}",
                f"{a['median_ms']:.2f} / {a['p99_ms']:.2f}", f"{row['ratio']:.2f}x")
    if kind == "throughput":
        return f"{row['base']['rps']:.0f}/s", f"{row['api']['rps']:.0f}/s", f"{row['ratio']:.2f}x"
    return "", f"{row['value_mib']:.1f} MiB", ""


HEADER = ("what", "base: median / p99 ms", "API: median / p99 ms", "ratio", "target", "")


def table(sections: list[tuple[str, list[Row]]]) -> str:
    lines: list[tuple[str, ...]] = [HEADER]
    for title, rows in sections:
        lines.append((f"-- {title}", "", "", "", "", ""))
        for row in rows:
            base, api, ratio = _cells(row)
            label = row["what"] + (f" [base: {row['base_label']}]"
                                   if row.get("base_label", "direct") != "direct" else "")
            lines.append((label, base, api, ratio, row["target"], row["verdict"]))
    widths = [max(len(line[i]) for line in lines if not line[0].startswith("-- "))
              for i in range(len(HEADER))]
    out = []
    for line in lines:
        if line[0].startswith("-- "):
            out.append(line[0])
            continue
        out.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                             for i, (cell, w) in enumerate(zip(line, widths, strict=True)))
                   .rstrip())
    return "\n".join(out)


def dump(path: str, document: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(document, f, indent=1, sort_keys=False)
        f.write("\n")
