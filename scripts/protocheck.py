"""`buf lint` and `buf breaking` over protos/, offline: protoc (grpc_tools,
with the googleapis protos from the venv) builds an image of the protos
now and of the protos at the commit to compare with (the previous commit,
or $BUF_AGAINST), and buf checks those images. `make lint` runs this; an
incompatible change to the public API fails it."""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile

from generate import ROOT, includes
from grpc_tools import protoc

BUF = ROOT / "tools" / "node_modules" / ".bin" / "buf"
CONFIG = ROOT / "buf.yaml"


def image(protos: pathlib.Path, out: pathlib.Path) -> None:
    sources = sorted(str(p.relative_to(protos)) for p in protos.rglob("*.proto"))
    args = ["protoc", *includes(protos), "--include_imports", "--include_source_info"]
    if protoc.main([*args, f"--descriptor_set_out={out}", *sources]) != 0:
        sys.exit(f"protoc failed on {protos}")


def our_files(protos: pathlib.Path) -> list[str]:
    # The image holds the googleapis imports too; only ours are checked.
    return [
        arg
        for p in sorted(protos.rglob("*.proto"))
        for arg in ("--path", str(p.relative_to(protos)))
    ]


def buf(*args: str) -> int:
    return subprocess.run([str(BUF), *args, "--config", str(CONFIG)], check=False).returncode


def protos_at(ref: str, into: pathlib.Path) -> pathlib.Path | None:
    """protos/ as it was at `ref`, or None when there is no such commit
    (a shallow clone, the first commit) or it had no protos."""
    known = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        capture_output=True,
        check=False,
    )
    if known.returncode != 0:
        return None
    into.mkdir(parents=True, exist_ok=True)
    archive = into / "protos.tar"
    with archive.open("wb") as out:
        made = subprocess.run(
            ["git", "-C", str(ROOT), "archive", ref, "protos"],
            stdout=out,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    if made.returncode != 0:
        return None
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "protos"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--against",
        default=os.environ.get("BUF_AGAINST", "HEAD~1"),
        help="git revision whose protos the current ones must stay compatible with",
    )
    args = parser.parse_args()
    protos = ROOT / "protos"
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        current = work / "current.binpb"
        image(protos, current)
        if buf("lint", str(current), *our_files(protos)) != 0:
            print("protocheck: buf lint failed", file=sys.stderr)
            return 1
        before = protos_at(args.against, work / "against")
        if before is None:
            print(
                f"protocheck: no protos at {args.against} to compare with; breaking check skipped"
            )
            return 0
        previous = work / "previous.binpb"
        image(before, previous)
        if buf("breaking", str(current), "--against", str(previous), *our_files(before)) != 0:
            print(
                f"protocheck: an incompatible change to the API since {args.against}",
                file=sys.stderr,
            )
            return 1
    print(f"protocheck: buf lint and buf breaking (against {args.against}) pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
