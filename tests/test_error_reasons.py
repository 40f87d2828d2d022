"""One reason, one code, everywhere: every ErrorInfo reason the code can
produce is read from the source (domain errors raised by providers, the
Cognito error table, the statuses server/errors.py builds, Envoy's own
replies), and each reason must map to exactly one canonical code. Clients
branch on the reason; the same reason meaning 400 here and 503 there would
break them."""

from __future__ import annotations

import ast
import pathlib
from collections import defaultdict

from google.rpc import code_pb2

from providers import values
from server import edge

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "providers").rglob("*.py"), *(ROOT / "server").rglob("*.py")])
ERROR_CLASSES = {
    name: cls.code
    for name, cls in vars(values).items()
    if isinstance(cls, type) and issubclass(cls, values.ProviderError)
}


def _code_of(node: ast.expr) -> str | None:
    """`InvalidArgument`, `grpc.StatusCode.NOT_FOUND` or `code_pb2.NOT_FOUND`."""
    if isinstance(node, ast.Name):
        return ERROR_CLASSES.get(node.id)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name | ast.Attribute):
        return node.attr
    return None


def reasons_in_source() -> dict[str, set[tuple[str, str]]]:
    """reason -> {(code, where)}"""
    found: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            first = node.args[0]
            # ErrorClass("REASON", ...)
            if isinstance(node.func, ast.Name) and node.func.id in ERROR_CLASSES:
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    found[first.value].add((ERROR_CLASSES[node.func.id], where))
            # Rule(ErrorClass, "REASON", ...) and _status(grpc.StatusCode.X, "REASON", ...)
            elif len(node.args) >= 2:
                second = node.args[1]
                code = _code_of(first)
                if code and isinstance(second, ast.Constant) and isinstance(second.value, str):
                    if second.value.isupper():
                        found[second.value].add((code, where))
    return found


def test_the_scan_sees_the_reasons_it_must() -> None:
    found = reasons_in_source()
    # One of each kind of source, so a broken scan cannot pass silently.
    for reason in (
        "MISSING_DEVICE_ID",
        "INVALID_CREDENTIALS",
        "STORE_UNAVAILABLE",
        "PROVIDER_MISCONFIGURED",
        "TOKEN_REVOKED",
        "UNKNOWN_SIGNING_KEY",
    ):
        assert reason in found, reason
    assert len(found) > 60


def test_each_reason_has_one_code() -> None:
    found = reasons_in_source()
    for status, (code, reason, _message) in edge.LOCAL_REPLIES.items():
        found[reason].add((code_pb2.Code.Name(code), f"server/edge.py LOCAL_REPLIES[{status}]"))
    for name in ("INVALID_HEADER", "UNMAPPED_REPLY"):
        code, reason, _message = getattr(edge, name)
        found[reason].add((code_pb2.Code.Name(code), f"server/edge.py {name}"))
    conflicts = {
        reason: sorted(places)
        for reason, places in found.items()
        if len({c for c, _ in places}) > 1
    }
    assert not conflicts, conflicts


def test_provider_misconfigured_is_a_failed_precondition() -> None:
    codes = {code for code, _ in reasons_in_source()["PROVIDER_MISCONFIGURED"]}
    assert codes == {"FAILED_PRECONDITION"}
