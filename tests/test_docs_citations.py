"""Every document the project cites is one it has (issue 18, defect 8: README.md, BENCHMARKS.md and
bench/run.py cited an ARCHITECTURE.md that is not in the repository)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A project document named in prose or a comment (README.md, BENCHMARKS.md, ...), and a relative
# markdown link.
DOC_NAME = re.compile(r"(?<![\w/.-])([A-Z][A-Z_-]*\.md)\b")
LINK = re.compile(r"\]\(([^)\s:#]+)(?:#[^)\s]*)?\)")


def _tracked(*patterns: str) -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z", "--", *patterns], cwd=ROOT, capture_output=True,
                            check=True, timeout=30).stdout.decode()
    return [ROOT / name for name in listed.split("\0") if name]


def test_every_cited_document_exists() -> None:
    missing = []
    for path in _tracked("*.md", "*.py", "*.sh", "*.yaml", "Dockerfile"):
        if path.name == Path(__file__).name or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for name in DOC_NAME.findall(line):
                if not (ROOT / name).is_file():
                    missing.append(f"{path.relative_to(ROOT)}:{number}: {name}")
            if path.suffix == ".md":
                for target in LINK.findall(line):
                    if not (path.parent / target).exists():
                        missing.append(f"{path.relative_to(ROOT)}:{number}: {target}")
    assert missing == []


def test_the_performance_targets_anchor_exists() -> None:
    """BENCHMARKS.md points at README.md#performance for the targets."""
    assert re.search(r"^## Performance$", (ROOT / "README.md").read_text(), re.MULTILINE)
