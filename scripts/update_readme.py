"""Regenerates the configuration tables in README.md from sidecar.config (SETTINGS and the
pod annotations of sidecar.annotations)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sidecar.config import annotation_reference, reference_table  # noqa: E402

README = Path(__file__).resolve().parent.parent / "README.md"
TABLES = {"config-table": reference_table, "annotation-table": annotation_reference}


def main() -> int:
    text = README.read_text()
    updated = text
    for name, make in TABLES.items():
        table = f"<!-- {name}:start -->\n" + make() + f"\n<!-- {name}:end -->"
        pattern = re.compile(f"<!-- {name}:start -->\n.*?<!-- {name}:end -->", re.S)
        updated = pattern.sub(lambda _m, table=table: table, updated)
    README.write_text(updated)
    print("README.md configuration table is up to date" if updated == text else "README.md table regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
