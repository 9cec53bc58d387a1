"""Template prerequisites: a missing or unusable program is named with the package to install."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helperd import templates


def test_debians_static_busybox_is_static_and_ls_is_not() -> None:
    assert templates.is_static("/bin/busybox")
    assert not templates.is_static("/bin/ls")


def test_busybox_missing_names_busybox_static(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setattr(templates, "SEARCH_PATH", str(tmp_path))
    why = templates.missing("busybox")
    assert why is not None and "not installed: apt install busybox-static" in why


def test_a_dynamically_linked_busybox_is_refused_with_the_static_package(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    shutil.copy("/bin/ls", tmp_path / "busybox")  # as Debian's dynamic `busybox` package is
    monkeypatch.setattr(templates, "SEARCH_PATH", str(tmp_path))
    why = templates.missing("busybox")
    assert why is not None and "dynamically linked; apt install busybox-static" in why


def test_templates_without_prerequisites_need_nothing() -> None:
    assert templates.missing("recorder") is None


@given(st.binary(max_size=256))
def test_is_static_is_false_for_any_non_elf_or_broken_file(data: bytes) -> None:
    path = f"/tmp/lwp-elf-{os.getpid()}"
    with open(path, "wb") as f:
        f.write(b"\x7fELF" + data)
    try:
        templates.is_static(path)  # never raises, whatever the header claims
    finally:
        os.unlink(path)
