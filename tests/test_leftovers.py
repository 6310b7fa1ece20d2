"""Leftovers of dead processes are removed; live processes' and foreign entries never are."""

from __future__ import annotations

import os
import re

from torchrl_offline.leftovers import OWNER, _host, owner_tag, pid_alive, remove_stale

PATTERN = re.compile(rf"\.job\.{OWNER}\.tmp")
DEAD = 2**22 + 1  # above Linux's largest pid: never a running process


def test_owner_tag_names_this_process_and_host():
    assert owner_tag() == f"{os.getpid()}-{_host()}"
    assert re.fullmatch(OWNER, owner_tag())
    assert pid_alive(os.getpid()) and not pid_alive(DEAD)


def test_only_dead_owners_entries_of_this_host_are_removed(tmp_path):
    dead_dir = tmp_path / f".job.{DEAD}-{_host()}.tmp"
    (dead_dir / "sub").mkdir(parents=True)
    dead_file = tmp_path / f".job.{DEAD + 1}-{_host()}.tmp"
    dead_file.write_bytes(b"x")
    live = tmp_path / f".job.{owner_tag()}.tmp"
    other_host = tmp_path / f".job.{DEAD}-00000000.tmp"
    foreign = tmp_path / ".job.notes.tmp"
    for path in (live, other_host, foreign):
        path.write_bytes(b"keep")
    removed = remove_stale(tmp_path, PATTERN)
    assert sorted(removed) == sorted([dead_dir, dead_file])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (live, other_host, foreign)
    )
    assert remove_stale(tmp_path / "absent", PATTERN) == []
