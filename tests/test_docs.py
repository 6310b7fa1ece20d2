"""Every ``python`` code block in docs/*.md and README.md runs, so the docs cannot rot.

Blocks of one file run in order in one namespace, in a fresh working directory with
Minari's datasets root and our cache pointed at temporary folders. A block fenced as
```python no-run is shown to readers but not executed (use it only for code that needs
resources tests cannot have, such as several machines).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
FENCE = re.compile(r"^```python[ \t]*(?P<flags>[^\n]*)\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)


def python_blocks(path: Path) -> list[tuple[int, str]]:
    text = path.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        if "no-run" in match.group("flags"):
            continue
        line = text.count("\n", 0, match.start()) + 2
        blocks.append((line, match.group("body")))
    return blocks


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.name)
def test_doc_code_blocks_run(doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(doc)
    if not blocks:
        pytest.skip(f"{doc.name} has no python code block")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.setenv("TORCHRL_OFFLINE_CACHE", str(tmp_path / "cache"))
    namespace: dict = {"__name__": f"docs_{doc.stem}"}
    for line, body in blocks:
        code = compile(body, f"{doc.name}:{line}", "exec")
        exec(code, namespace)
