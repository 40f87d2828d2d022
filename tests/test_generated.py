"""generated/ is exactly what `make generate` produces from protos/."""

from __future__ import annotations

import filecmp
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _files(root: pathlib.Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_is_fresh(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "generated"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    committed = ROOT / "generated"
    assert _files(out) == _files(committed)
    stale = [
        name for name in _files(out) if not filecmp.cmp(out / name, committed / name, shallow=False)
    ]
    assert not stale, f"run `make generate`: stale {stale}"
