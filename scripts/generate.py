"""Rebuild generated/ from protos/: Python modules, type stubs, and the
descriptor set Envoy's transcoder reads; and openapi/identify.v1.yaml, the
OpenAPI document of the REST API (scripts/openapi.py). `make generate` runs
this; a test runs it into a temporary folder and compares, so neither drifts."""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import tempfile

import google.api
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

import openapi

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OPENAPI = ROOT / "openapi" / "identify.v1.yaml"
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


def _descriptor_set(out: pathlib.Path, sources: list[str], *extra: str) -> None:
    args = [
        "protoc",
        *includes(),
        "--include_imports",
        *extra,
        f"--descriptor_set_out={out}",
        *sources,
        *EXTRA,
    ]
    if protoc.main(args) != 0:
        sys.exit(f"protoc failed ({out.name})")


def generate(out: pathlib.Path, document: pathlib.Path) -> None:
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
    _descriptor_set(out / "identify.pb", sources)
    # The comments are for the document only: Envoy's copy stays lean.
    with tempfile.TemporaryDirectory() as tmp:
        commented = pathlib.Path(tmp) / "commented.pb"
        _descriptor_set(commented, sources, "--include_source_info")
        files = descriptor_pb2.FileDescriptorSet.FromString(commented.read_bytes())
    document.write_text(openapi.render(files))
    for package in {p.parent for p in out.rglob("*_pb2.py")}:
        node = package
        while node != out:
            (node / "__init__.py").touch()
            (node / "py.typed").touch()
            node = node.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "generated")
    parser.add_argument("--openapi", type=pathlib.Path, default=OPENAPI)
    args = parser.parse_args()
    # Build aside, then swap, so a failed run never leaves generated/ half-written.
    with tempfile.TemporaryDirectory() as tmp:
        fresh = pathlib.Path(tmp) / "generated"
        document = pathlib.Path(tmp) / args.openapi.name
        generate(fresh, document)
        if args.out.exists():
            shutil.rmtree(args.out)
        shutil.copytree(fresh, args.out)
        args.openapi.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(document, args.openapi)
    for path in (args.out, args.openapi):
        print(f"generated {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
