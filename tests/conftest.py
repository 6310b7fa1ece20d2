"""Test-suite-wide isolation: no test writes into the user's home directory."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_dataset_dirs(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point our conversion cache and Minari's datasets root at per-test temporary folders
    (a test may still override either with its own ``monkeypatch.setenv``)."""
    base = tmp_path_factory.mktemp("isolated")
    monkeypatch.setenv("TORCHRL_OFFLINE_CACHE", str(base / "cache"))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(base / "minari"))
