"""The documents name only what exists: every test SECURITY.md cites as proof is a real test."""
from __future__ import annotations

import os
import re

from tests.conftest import ROOT

CITATION = re.compile(r"`(?:([\w/]+\.py))?::(\w+)`|`([\w/]+\.py)`")


def cited_tests(text: str) -> list[tuple[str, str]]:
    """(file, test) for each `file.py::test` and `::test` (of the file named before it)."""
    found = []
    for line in text.splitlines():
        current = None
        for m in CITATION.finditer(line):
            if m.group(3):
                current = m.group(3)
                continue
            current = m.group(1) or current
            assert current is not None, f"`::{m.group(2)}` names no file: {line[:80]}"
            found.append((current.removeprefix("tests/"), m.group(2)))
    return found


def test_every_test_security_md_cites_exists() -> None:
    with open(os.path.join(ROOT, "SECURITY.md")) as f:
        cited = cited_tests(f.read())
    assert len(cited) > 50
    missing = []
    for name, test in cited:
        path = os.path.join(ROOT, "tests", name)
        if not os.path.exists(path):
            missing.append(f"{name} (no such file)")
            continue
        with open(path) as f:
            if not re.search(rf"^(?:async )?def {test}\b", f.read(), re.M):
                missing.append(f"{name}::{test}")
    assert not missing, missing
