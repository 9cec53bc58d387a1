"""Prometheus' text exposition format (0.0.4), written by hand, and the counters both sides keep.

By hand rather than python3-prometheus-client: we need counters, one gauge kind and fixed-bucket
histograms, ~80 lines, with no global registry and no process collectors to reason about. Label
values are escaped here; callers only pass validated names (never token material).
"""
from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: a list from the table (~1 ms) to a create (minutes).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120, 600)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        at = bisect.bisect_left(BUCKETS, seconds)
        if at < len(BUCKETS):
            self.counts[at] += 1
        self.total += seconds
        self.n += 1


@dataclass
class Family:
    name: str
    kind: str  # "counter" | "gauge" | "histogram"
    help: str
    values: dict[Labels, float] = field(default_factory=dict)
    histograms: dict[Labels, Histogram] = field(default_factory=dict)

    def inc(self, labels: Labels = (), by: float = 1) -> None:
        self.values[labels] = self.values.get(labels, 0) + by

    def set(self, labels: Labels, value: float) -> None:
        self.values[labels] = value

    def observe(self, labels: Labels, seconds: float) -> None:
        self.histograms.setdefault(labels, Histogram()).observe(seconds)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in self.values.items():
            yield f"{self.name}{_labels(labels)} {_number(value)}"
        for labels, h in self.histograms.items():
            running = 0
            for bound, count in zip(BUCKETS, h.counts, strict=True):
                running += count
                le = _labels(labels, f'le="{bound}"')
                yield f"{self.name}_bucket{le} {running}"
            le = _labels(labels, 'le="+Inf"')
            yield f"{self.name}_bucket{le} {h.n}"
            yield f"{self.name}_sum{_labels(labels)} {_number(h.total)}"
            yield f"{self.name}_count{_labels(labels)} {h.n}"


def render(families: Iterable[Family]) -> str:
    return "\n".join(line for f in families for line in f.render()) + "\n"


def snapshot(families: Mapping[str, Family]) -> dict[str, object]:
    """A family set as plain data for the socket (the helper's side of /metrics)."""
    return {name: {"values": [[[list(p) for p in k], v] for k, v in f.values.items()],
                   "histograms": [[[list(p) for p in k], h.counts, h.total, h.n]
                                  for k, h in f.histograms.items()]}
            for name, f in families.items()}


# The helper's families as they cross the socket: name -> kind, help, label keys. The frontend
# accepts exactly these, with label values checked by LABEL_CHECKS, so a confused helper cannot
# put arbitrary text (or anything secret-shaped) into a scrape.
HELPER_FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "lwp_container_state": ("gauge", "1 for the state each container is in (the helper's "
                                     "state table)", ("container", "state")),
    "lwp_containers": ("gauge", "containers in the helper's lxcpath", ()),
    "lwp_helper_ops_total": ("counter", "helper operations by outcome", ("op", "outcome")),
    "lwp_helper_op_duration_seconds": ("histogram", "helper operation duration", ("op",)),
    "lwp_audit_records_total": ("counter", "audit trail records written", ()),
    "lwp_event_subscribers": ("gauge", "event stream subscribers in the helper", ()),
    "lwp_event_subscribers_dropped_total": ("counter", "subscribers dropped as too slow", ()),
    "lwp_lxc_notifications_total": ("counter", "liblxc state notifications received", ()),
}


def decode_snapshot(obj: object, checks: Mapping[str, Any]) -> list[Family]:
    """The helper's families from an untrusted reply; ValueError when anything is off."""
    if not isinstance(obj, dict) or not set(obj) <= set(HELPER_FAMILIES):
        raise ValueError("unknown metric family")
    out = []
    for name, body in obj.items():
        kind, help_, keys = HELPER_FAMILIES[name]
        family = Family(name, kind, help_)
        if not isinstance(body, dict) or set(body) != {"values", "histograms"}:
            raise ValueError(f"{name}: malformed")
        for labels, value in body["values"]:
            family.values[_checked(labels, keys, checks)] = _count(value)
        for labels, counts, total, n in body["histograms"]:
            if not (isinstance(counts, list) and len(counts) == len(BUCKETS)):
                raise ValueError(f"{name}: buckets")
            family.histograms[_checked(labels, keys, checks)] = Histogram(
                [int(_count(c)) for c in counts], _count(total), int(_count(n)))
        out.append(family)
    return out


def _checked(labels: object, keys: tuple[str, ...], checks: Mapping[str, Any]) -> Labels:
    if not isinstance(labels, list) or len(labels) != len(keys):
        raise ValueError("labels")
    pairs = []
    for pair, key in zip(labels, keys, strict=True):
        if not (isinstance(pair, list) and len(pair) == 2 and pair[0] == key
                and isinstance(pair[1], str) and checks[key](pair[1])):
            raise ValueError(f"label {key}")
        pairs.append((key, pair[1]))
    return tuple(pairs)


def _count(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise ValueError("value")
    return value
