"""Suite-wide isolation (tests and doctests): nothing writes into the user's home directory."""

from __future__ import annotations

import pytest
import torch

# One intra-op thread: the suite's networks are tiny, and on a shared 2-core machine two
# threads make small ops 10-50x slower under load. Also keeps results reproducible.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_dataset_dirs(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point our conversion cache and Minari's datasets root at per-test temporary folders
    (a test may still override either with its own ``monkeypatch.setenv``)."""
    base = tmp_path_factory.mktemp("isolated")
    monkeypatch.setenv("TORCHRL_OFFLINE_CACHE", str(base / "cache"))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(base / "minari"))
