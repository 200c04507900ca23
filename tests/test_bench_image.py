"""bench/image.py's in-container half, run here: it finds the gate through PATH and its `#!` line.

The image's gate shebang is whatever pip wrote (and may gain interpreter flags such as -S), so
the measurement must take the interpreter and flags from the script, not assume them. The
full measurement runs in CI's image smoke test only with --measure; this keeps its logic honest.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import image  # noqa: E402


def _script(path: Path, shebang: str, body: str = "import sys\nsys.exit(0)\n") -> Path:
    path.write_text(f"{shebang}\n{body}")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(("shebang", "flags"), [
    ("#!{py}", []),
    ("#!{py} -S", ["-S"]),
    ("#!{py} -I -S", ["-I", "-S"]),
    ("#!/usr/bin/env {py}", []),
    ("#!/usr/bin/env -S {py} -S", ["-S"]),
])
def test_interpreter_and_flags_come_from_the_shebang(tmp_path: Path, shebang: str, flags: list[str]) -> None:
    script = _script(tmp_path / "readiness-gate", shebang.format(py=sys.executable))
    assert image.interpreter_of(str(script)) == (sys.executable, flags)


def test_inside_times_the_gate_on_path_against_its_own_interpreter(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _script(tmp_path / "readiness-gate", f"#!{sys.executable} -S", "print('ok')\n")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")

    result = image.inside(rounds=2, samples=2, warmup=1)

    assert result["gate"] == str(tmp_path / "readiness-gate")
    assert result["argv"] == {"gate": [str(tmp_path / "readiness-gate")],
                              "bare": [sys.executable, "-c", "pass"],
                              "bare_with_gate_flags": [sys.executable, "-S", "-c", "pass"]}
    assert result["gate_exit_codes"] == [0]
    assert len(result["per_round"]) == 2
    for row in result["per_round"]:
        assert set(row) == {f"{k}_{w}_ms" for k in result["argv"] for w in ("cpu", "wall")}
        assert all(value > 0 for value in row.values()), row  # every child ran and used CPU


def test_inside_reports_a_failing_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gate that fails while measured is reported, so the caller can refuse the numbers."""
    _script(tmp_path / "readiness-gate", f"#!{sys.executable}", "import sys\nsys.exit(1)\n")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert image.inside(rounds=1, samples=1, warmup=0)["gate_exit_codes"] == [1]
