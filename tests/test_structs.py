"""server/structs.py's fill builds the very Struct that Struct.update does,
for every JSON type and the odd values around them: same serialized bytes."""

from __future__ import annotations

import enum
import math
from typing import Any

import pytest
from google.protobuf import struct_pb2
from identify.v1 import identify_pb2 as pb

from server import structs


class Level(enum.IntEnum):
    HIGH = 3


class Tag(str):
    pass


NASTY: dict[str, Any] = {
    "": "empty key",
    "str": "plain",
    "unicode": "žluťoučký 🐎 \u2028",
    "int": 7,
    "negative": -12,
    "zero": 0,
    "float": 1.5,
    "negative_zero": -0.0,
    "whole_float": 3.0,
    "big_int": 2**53 + 1,
    "huge": 1e308,
    "inf": math.inf,
    "nan": math.nan,
    "true": True,
    "false": False,
    "none": None,
    "empty_dict": {},
    "empty_list": [],
    "tuple": (1, "two", None),
    "list": [True, 0, 1.25, None, "x", [], {}, [[False]], {"k": [None]}],
    "nested": {"a": {"b": {"c": [1, {"d": None, "e": [True, {"f": {}}]}]}}},
    "int_enum": Level.HIGH,
    "str_subclass": Tag("tagged"),
    "struct_value": struct_pb2.Struct(fields={"x": struct_pb2.Value(string_value="y")}),
    "list_value": struct_pb2.ListValue(values=[struct_pb2.Value(bool_value=True)]),
}


def built(data: dict[str, Any], *, fast: bool) -> pb.UserReply:
    out = pb.UserReply(result=1, message="OK")
    out.data.SetInParent()
    if fast:
        structs.fill(out.data, data)
    else:
        out.data.update(data)
    return out


@pytest.mark.parametrize("key", sorted(NASTY))
def test_each_value_alone_is_built_as_update_builds_it(key: str) -> None:
    data = {key: NASTY[key]}
    assert built(data, fast=True).SerializeToString() == built(data, fast=False).SerializeToString()


def test_the_whole_mix_gives_the_same_bytes_and_values() -> None:
    fast, slow = built(NASTY, fast=True), built(NASTY, fast=False)
    assert fast.SerializeToString() == slow.SerializeToString()
    assert set(fast.data.keys()) == set(NASTY)
    # The kinds the JSON types map to, as update sets them (True is no number).
    kinds = {k: fast.data.fields[k].WhichOneof("kind") for k in ("int", "true", "none", "tuple")}
    assert kinds == {
        "int": "number_value",
        "true": "bool_value",
        "none": "null_value",
        "tuple": "list_value",
    }
    assert fast.data.fields["empty_dict"].HasField("struct_value")
    assert fast.data.fields["empty_list"].HasField("list_value")


def test_an_empty_dict_sets_an_empty_struct() -> None:
    fast, slow = built({}, fast=True), built({}, fast=False)
    assert fast.HasField("data") and fast.SerializeToString() == slow.SerializeToString()


def test_a_filled_struct_is_overwritten_as_update_would() -> None:
    first = {"a": {"old": 1}, "b": [1, 2], "c": "x"}
    then = {"a": {"new": 2}, "b": [3], "d": None}
    fast, slow = struct_pb2.Struct(), struct_pb2.Struct()
    structs.fill(fast, first)
    structs.fill(fast, then)
    slow.update(first)
    slow.update(then)
    assert fast.SerializeToString() == slow.SerializeToString()
    assert set(fast["a"].keys()) == {"new"}


@pytest.mark.parametrize("bad", [{1, 2}, b"bytes", object(), {"deep": [{"x": {3}}]}])
def test_values_update_refuses_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError):
        struct_pb2.Struct().update({"k": bad})
    with pytest.raises(ValueError):
        structs.fill(struct_pb2.Struct(), {"k": bad})
