"""kit.hoptrace: a turn's marks across processes, off unless KIT_HOP_TRACE names a folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from emulator.sandbox import local
from kit import hoptrace


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process has not looked at KIT_HOP_TRACE yet (and looks again after the test)."""
    monkeypatch.setattr(hoptrace, "_looked", False)
    monkeypatch.setattr(hoptrace, "_out", None)


def test_off_it_writes_nothing_and_looks_once(
    fresh: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(hoptrace.ENV, raising=False)
    hoptrace.hop("host: message received")
    monkeypatch.setenv(hoptrace.ENV, str(tmp_path))  # too late: the look was made
    hoptrace.hop("host: user committed")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_it_cannot_open_leaves_the_turn_alone(
    fresh: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(hoptrace.ENV, str(tmp_path / "not there"))  # as in a confined sandbox
    hoptrace.hop("runtime: turn received")
    hoptrace.hop("runtime: batch sent")
    assert list(tmp_path.iterdir()) == []


def test_a_link_in_the_folder_is_not_followed(
    fresh: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another user of the shared folder (the sandbox user) cannot point this process's
    marks at a file of its choosing."""
    target = tmp_path / "event log"
    target.write_text("kept\n")
    (tmp_path / f"{os.getpid()}.log").symlink_to(target)
    monkeypatch.setenv(hoptrace.ENV, str(tmp_path))
    hoptrace.hop("host: message received")
    assert target.read_text() == "kept\n"


def test_each_process_marks_in_its_own_file_on_one_clock(
    fresh: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(hoptrace.ENV, str(tmp_path))
    hoptrace.hop("first")
    pid = os.fork()
    if pid == 0:  # as the fork server's runtimes are made
        try:
            hoptrace.hop("in the child")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    hoptrace.hop("last")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{os.getpid()}.log", f"{pid}.log"]
    )
    marks = hoptrace.read(str(tmp_path))
    assert [label for _, label in marks] == ["first", "in the child", "last"]
    assert [ns for ns, _ in marks] == sorted(ns for ns, _ in marks)


def test_the_local_provider_hands_the_folder_to_its_sandboxes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(hoptrace.ENV, raising=False)
    assert local._hop_trace() == {}
    monkeypatch.setenv(hoptrace.ENV, str(tmp_path))
    assert local._hop_trace() == {hoptrace.ENV: str(tmp_path)}
