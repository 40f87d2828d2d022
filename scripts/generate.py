"""Rebuild generated/ from protos/: Python modules, type stubs, and the
descriptor set Envoy's transcoder reads. `make generate` runs this; a test runs
it into a temporary folder and compares, so generated/ never drifts."""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import tempfile

import google.api
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
# The transcoder renders error details only for types it finds in the
# descriptor set, so ErrorInfo and RetryInfo must travel with our API.
EXTRA = ["google/rpc/error_details.proto", "google/rpc/status.proto"]


def includes(protos: pathlib.Path = PROTOS) -> list[str]:
    googleapis = pathlib.Path(next(iter(google.api.__path__))).parent.parent
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    return [f"-I{protos}", f"-I{googleapis}", f"-I{well_known}"]


def _plugin(name: str) -> str:
    # The plugins live beside this interpreter; PATH may not name the venv.
    return str(pathlib.Path(sys.executable).parent / name)


def generate(out: pathlib.Path) -> None:
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        *includes(),
        f"--python_out={out}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--mypy_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_grpc_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed (python)")
    descriptor = [
        "protoc",
        *includes(),
        "--include_imports",
        f"--descriptor_set_out={out / 'identify.pb'}",
        *sources,
        *EXTRA,
    ]
    if protoc.main(descriptor) != 0:
        sys.exit("protoc failed (descriptor set)")
    for package in {p.parent for p in out.rglob("*_pb2.py")}:
        node = package
        while node != out:
            (node / "__init__.py").touch()
            (node / "py.typed").touch()
            node = node.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "generated")
    args = parser.parse_args()
    # Build aside, then swap, so a failed run never leaves generated/ half-written.
    with tempfile.TemporaryDirectory() as tmp:
        fresh = pathlib.Path(tmp) / "generated"
        generate(fresh)
        if args.out.exists():
            shutil.rmtree(args.out)
        shutil.copytree(fresh, args.out)
    print(f"generated {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
