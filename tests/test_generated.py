"""generated/ and openapi/identify.v1.yaml are exactly what `make generate`
produces from protos/."""

from __future__ import annotations

import filecmp
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCUMENT = ROOT / "openapi" / "identify.v1.yaml"


def _files(root: pathlib.Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """`make generate`, run into a temporary folder."""
    out = tmp_path_factory.mktemp("fresh")
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "generate.py"),
            "--out",
            str(out / "generated"),
            "--openapi",
            str(out / DOCUMENT.name),
        ],
        check=True,
        capture_output=True,
    )
    return out


def test_generated_code_is_fresh(fresh: pathlib.Path) -> None:
    out = fresh / "generated"
    committed = ROOT / "generated"
    assert _files(out) == _files(committed)
    stale = [
        name for name in _files(out) if not filecmp.cmp(out / name, committed / name, shallow=False)
    ]
    assert not stale, f"run `make generate`: stale {stale}"


def test_openapi_document_is_fresh(fresh: pathlib.Path) -> None:
    assert (fresh / DOCUMENT.name).read_text() == DOCUMENT.read_text(), (
        f"run `make generate`: stale {DOCUMENT.relative_to(ROOT)}"
    )
