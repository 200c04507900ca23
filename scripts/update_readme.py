"""Regenerates the configuration table in README.md from sidecar.config.SETTINGS."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sidecar.config import reference_table  # noqa: E402

README = Path(__file__).resolve().parent.parent / "README.md"
PATTERN = re.compile(r"<!-- config-table:start -->\n.*?<!-- config-table:end -->", re.S)


def main() -> int:
    text = README.read_text()
    table = "<!-- config-table:start -->\n" + reference_table() + "\n<!-- config-table:end -->"
    updated = PATTERN.sub(lambda _m: table, text)
    README.write_text(updated)
    print("README.md configuration table is up to date" if updated == text else "README.md table regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
