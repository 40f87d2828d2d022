"""The OpenAPI 3.1 document of the REST API, written from the descriptor set
(built with source info, for the comments) by scripts/generate.py.

It describes what the edge does, not only what the protos say: the paths and
verbs of every `google.api.http` binding (additional bindings too), the query
parameters the transcoder maps non-body fields to, JSON names and the fields
it always prints as its options in envoy/envoy.yaml say, the error body
(google.rpc.Status with ErrorInfo and RetryInfo) for every status a call can
be answered with, by the servers or by Envoy itself (server/edge.py), and the
edge's own routes. No generator that installs here does this (DESIGN.md)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf import descriptor_pb2
from google.rpc import code_pb2

from providers.values import ProviderError
from server import edge

JSON = dict[str, Any]
Field = descriptor_pb2.FieldDescriptorProto
Message = descriptor_pb2.DescriptorProto

TRANSCODER = "envoy.filters.http.grpc_json_transcoder"
# How the transcoder (convert_grpc_status) turns a gRPC code into HTTP.
HTTP_OF_CODE = {
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNAUTHENTICATED: 401,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.ABORTED: 409,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.UNKNOWN: 500,
    code_pb2.INTERNAL: 500,
    code_pb2.DATA_LOSS: 500,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DEADLINE_EXCEEDED: 504,
}
# What any RPC may answer (server/errors.py, server/interceptors.py): a
# request whose bytes do not decode, a bug, the store unavailable.
EVERY_RPC = {code_pb2.INVALID_ARGUMENT, code_pb2.INTERNAL, code_pb2.UNAVAILABLE}
# An RPC naming a project refuses an unknown one.
PROJECT_RPC = {code_pb2.NOT_FOUND}
# Envoy's own answers that no documented operation gets: unknown path or
# method. Its 429 is the sign-in limiter's, on provider calls only, which
# answer 429 of their own anyway.
EDGE_NOT_FOR_OPERATIONS = {404, 405, 429}
# The error detail types the servers (server/errors.py) and the edge send.
ERROR_DETAILS = (".google.rpc.ErrorInfo", ".google.rpc.RetryInfo")
STATUS = ".google.rpc.Status"
STATUS_DESCRIPTION = (
    "The body of every error reply, the servers' and the edge's own (AIP-193): `code` is the"
    " gRPC code, `message` is for humans, and `details` holds an ErrorInfo whose `reason`"
    " (domain `identify`) is stable to branch on, plus a RetryInfo when retrying later helps."
    " The README's Errors table lists the reasons."
)
# The fields every error body carries, whether a server's (printed by the
# transcoder) or the edge's own (server/edge.py, which sets no metadata).
ERROR_FIELDS = {
    STATUS: ("code", "message", "details"),
    ".google.rpc.ErrorInfo": ("reason", "domain"),
    ".google.rpc.RetryInfo": ("retry_delay",),
}
RETRY_AFTER_STATUSES = (429, 503)
# Envoy's refusals of a request it could not read whole (HTTP/1.0, headers
# too large, too slow): no request id was made for it.
UNREAD_STATUSES = (408, 426, 431)
BEARER = "bearerAuth"

_INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
# uint32 needs 64 bits in languages without unsigned types.
_UINT32 = {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1}
SCALARS: dict[int, JSON] = {
    Field.TYPE_DOUBLE: {"type": "number", "format": "double"},
    Field.TYPE_FLOAT: {"type": "number", "format": "float"},
    Field.TYPE_INT32: _INT32,
    Field.TYPE_SINT32: _INT32,
    Field.TYPE_SFIXED32: _INT32,
    Field.TYPE_UINT32: _UINT32,
    Field.TYPE_FIXED32: _UINT32,
    Field.TYPE_BOOL: {"type": "boolean"},
    Field.TYPE_STRING: {"type": "string"},
    Field.TYPE_BYTES: {"type": "string", "format": "byte", "contentEncoding": "base64"},
}
_64_BIT = {
    Field.TYPE_INT64: ("int64", r"^-?[0-9]+$"),
    Field.TYPE_SINT64: ("int64", r"^-?[0-9]+$"),
    Field.TYPE_SFIXED64: ("int64", r"^-?[0-9]+$"),
    Field.TYPE_UINT64: ("uint64", r"^[0-9]+$"),
    Field.TYPE_FIXED64: ("uint64", r"^[0-9]+$"),
}
_DURATION = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"}
# proto3 JSON's own forms of the well-known types.
WELL_KNOWN: dict[str, JSON] = {
    ".google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    ".google.protobuf.Value": {"description": "Any JSON value."},
    ".google.protobuf.ListValue": {"type": "array"},
    ".google.protobuf.NullValue": {"type": "null"},
    ".google.protobuf.Empty": {"type": "object"},
    ".google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    ".google.protobuf.Duration": _DURATION,
    ".google.protobuf.FieldMask": {"type": "string"},
    ".google.protobuf.Any": {
        "type": "object",
        "required": ["@type"],
        "properties": {"@type": {"type": "string"}},
        "additionalProperties": True,
    },
    ".google.protobuf.DoubleValue": {"type": ["number", "null"]},
    ".google.protobuf.FloatValue": {"type": ["number", "null"]},
    ".google.protobuf.Int32Value": {**_INT32, "type": ["integer", "null"]},
    ".google.protobuf.UInt32Value": {**_UINT32, "type": ["integer", "null"]},
    ".google.protobuf.Int64Value": {"type": ["integer", "string", "null"], "format": "int64"},
    ".google.protobuf.UInt64Value": {"type": ["integer", "string", "null"], "format": "uint64"},
    ".google.protobuf.BoolValue": {"type": ["boolean", "null"]},
    ".google.protobuf.StringValue": {"type": ["string", "null"]},
    ".google.protobuf.BytesValue": {"type": ["string", "null"], "contentEncoding": "base64"},
}
# Types the transcoder cannot take from a query string.
_NOT_IN_QUERY = {
    ".google.protobuf.Struct",
    ".google.protobuf.Value",
    ".google.protobuf.ListValue",
    ".google.protobuf.Any",
}

# The routes Envoy answers itself (envoy/envoy.yaml): its health check, and
# this document.
HEALTHZ = edge.HEALTHZ_PATH
DOCUMENT_PATH = edge.OPENAPI_PATH
DOCUMENT_TYPE = edge.OPENAPI_CONTENT_TYPE


# --------------------------------------------------------------------------
# The edge's settings that shape the JSON
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Transcoder:
    services: tuple[str, ...]
    proto_names: bool
    always_print: bool
    enums_as_ints: bool
    reject_unknown_query: bool

    @classmethod
    def from_edge(cls) -> Transcoder:
        """The transcoder's options as the edge is rendered."""
        config = yaml.safe_load(edge.render(http_port=8080, backends=[edge.Backend("::1", 1)]))
        for listener in config["static_resources"]["listeners"]:
            for chain in listener["filter_chains"]:
                for network_filter in chain["filters"]:
                    for http_filter in network_filter["typed_config"].get("http_filters", []):
                        if http_filter["name"] == TRANSCODER:
                            return cls._from(http_filter["typed_config"])
        raise ValueError(f"no {TRANSCODER} in the edge config")

    @classmethod
    def _from(cls, options: JSON) -> Transcoder:
        if not options.get("convert_grpc_status"):
            raise ValueError("the error bodies described here need convert_grpc_status")
        printing = options.get("print_options", {})
        checks = options.get("request_validation_options", {})
        return cls(
            services=tuple(options["services"]),
            proto_names=bool(printing.get("preserve_proto_field_names")),
            always_print=bool(printing.get("always_print_primitive_fields")),
            enums_as_ints=bool(printing.get("always_print_enums_as_ints")),
            reject_unknown_query=bool(checks.get("reject_unknown_query_parameters")),
        )


# --------------------------------------------------------------------------
# The descriptor set, indexed, with its comments
# --------------------------------------------------------------------------
@dataclass
class Protos:
    messages: dict[str, Message] = field(default_factory=dict)
    enums: dict[str, descriptor_pb2.EnumDescriptorProto] = field(default_factory=dict)
    services: dict[str, descriptor_pb2.ServiceDescriptorProto] = field(default_factory=dict)
    # A service's full name -> the file that declares it.
    files: dict[str, descriptor_pb2.FileDescriptorProto] = field(default_factory=dict)
    # Full name (fields: "message.field") -> its leading comment.
    comments: dict[str, str] = field(default_factory=dict)

    @classmethod
    def index(cls, files: descriptor_pb2.FileDescriptorSet) -> Protos:
        protos = cls()
        for file in files.file:
            # Comments of protos we import (googleapis) run long, with
            # examples of Google's own APIs: their first paragraph says enough.
            ours = not file.name.startswith("google/")
            located = {
                tuple(loc.path): _clean(loc.leading_comments, whole=ours)
                for loc in file.source_code_info.location
                if loc.leading_comments.strip()
            }
            prefix = f".{file.package}" if file.package else ""
            protos.comments[file.name] = _file_comment(file)
            for i, message in enumerate(file.message_type):
                protos._message(f"{prefix}.{message.name}", message, (4, i), located)
            for i, enum in enumerate(file.enum_type):
                protos._enum(f"{prefix}.{enum.name}", enum, (5, i), located)
            for i, service in enumerate(file.service):
                name = f"{prefix}.{service.name}"
                protos.services[name] = service
                protos.files[name] = file
                protos._comment(name, (6, i), located)
                for j, method in enumerate(service.method):
                    protos._comment(f"{name}.{method.name}", (6, i, 2, j), located)
        return protos

    def _comment(
        self, name: str, path: tuple[int, ...], located: dict[tuple[int, ...], str]
    ) -> None:
        if path in located:
            self.comments[name] = located[path]

    def _message(
        self, name: str, message: Message, path: tuple[int, ...], located: dict[Any, str]
    ) -> None:
        self.messages[name] = message
        self._comment(name, path, located)
        for i, f in enumerate(message.field):
            self._comment(f"{name}.{f.name}", (*path, 2, i), located)
        for i, nested in enumerate(message.nested_type):
            self._message(f"{name}.{nested.name}", nested, (*path, 3, i), located)
        for i, enum in enumerate(message.enum_type):
            self._enum(f"{name}.{enum.name}", enum, (*path, 4, i), located)

    def _enum(
        self,
        name: str,
        enum: descriptor_pb2.EnumDescriptorProto,
        path: tuple[int, ...],
        located: dict[Any, str],
    ) -> None:
        self.enums[name] = enum
        self._comment(name, path, located)


def _clean(comment: str, *, whole: bool = True) -> str:
    lines = [line[1:] if line.startswith(" ") else line for line in comment.splitlines()]
    text = "\n".join(line.rstrip() for line in lines).strip()
    return text if whole else text.split("\n\n")[0]


def _file_comment(file: descriptor_pb2.FileDescriptorProto) -> str:
    # The file's own comment sits above `syntax` (path 12).
    for loc in file.source_code_info.location:
        if list(loc.path) == [12]:
            text = loc.leading_comments or "".join(loc.leading_detached_comments)
            return _clean(text)
    return ""


def _summary(comment: str) -> str:
    first = " ".join(comment.split("\n\n")[0].split())
    found = re.match(r"(.+?\.)(\s|$)", first)
    return found[1] if found else first


def _behaviors(f: Field) -> set[int]:
    return set(f.options.Extensions[field_behavior_pb2.field_behavior])


def _has_presence(f: Field) -> bool:
    if f.label == Field.LABEL_REPEATED:
        return False
    return f.proto3_optional or f.HasField("oneof_index") or f.type == Field.TYPE_MESSAGE


# --------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------
REQUEST, REPLY, ERROR = "request", "reply", "error"


class Schemas:
    """components/schemas, one per message a call sends or receives; which
    fields are required depends on the side a message travels."""

    def __init__(self, protos: Protos, transcoder: Transcoder) -> None:
        self.protos = protos
        self.transcoder = transcoder
        self.roles: dict[str, set[str]] = {}
        self.components: JSON = {}

    def json_name(self, f: Field) -> str:
        return f.name if self.transcoder.proto_names else f.json_name

    def name(self, full_name: str) -> str:
        short = full_name.rsplit(".", 1)[-1]
        clashes = [n for n in self.protos.messages if n.rsplit(".", 1)[-1] == short]
        clashes += [n for n in self.protos.enums if n.rsplit(".", 1)[-1] == short]
        return short if len(clashes) == 1 else full_name.lstrip(".")

    def ref(self, full_name: str) -> JSON:
        return {"$ref": f"#/components/schemas/{self.name(full_name)}"}

    def use(self, full_name: str, role: str) -> None:
        """Marks a message, and every message it holds, as travelling `role`."""
        if full_name in WELL_KNOWN or role in self.roles.get(full_name, set()):
            return
        self.roles.setdefault(full_name, set()).add(role)
        if full_name in self.protos.enums:
            return
        for f in self.protos.messages[full_name].field:
            if f.type_name:
                self.use(f.type_name, role)

    def is_map(self, f: Field) -> bool:
        entry = self.protos.messages.get(f.type_name)
        return bool(entry and entry.options.map_entry and f.label == Field.LABEL_REPEATED)

    def build(self) -> JSON:
        for full_name in sorted(self.roles, key=self.name):
            roles = self.roles[full_name]
            if full_name in self.protos.enums:
                self.components[self.name(full_name)] = self._enum(full_name)
            elif not self.protos.messages[full_name].options.map_entry:
                self.components[self.name(full_name)] = self._message(full_name, roles)
        return self.components

    def _enum(self, full_name: str) -> JSON:
        enum = self.protos.enums[full_name]
        schema: JSON = (
            {"type": "integer", "enum": [v.number for v in enum.value]}
            if self.transcoder.enums_as_ints
            else {"type": "string", "enum": [v.name for v in enum.value]}
        )
        return _described(schema, self.protos.comments.get(full_name))

    def _message(self, full_name: str, roles: set[str]) -> JSON:
        message = self.protos.messages[full_name]
        properties: JSON = {}
        required: list[str] = []
        for f in message.field:
            name = self.json_name(f)
            schema = self.field_schema(f, roles)
            if full_name == STATUS and f.name == "details":
                # Only these travel in `details`, each as an Any: its fields
                # and its type URL side by side.
                schema = {
                    "type": "array",
                    "items": {
                        "oneOf": [self.ref(d) for d in ERROR_DETAILS],
                        "discriminator": {
                            "propertyName": "@type",
                            "mapping": {_type_url(d): self.ref(d)["$ref"] for d in ERROR_DETAILS},
                        },
                    },
                }
            behaviors = _behaviors(f)
            if field_behavior_pb2.OUTPUT_ONLY in behaviors:
                schema["readOnly"] = True
            if field_behavior_pb2.INPUT_ONLY in behaviors:
                schema["writeOnly"] = True
            properties[name] = _described(schema, self.protos.comments.get(f"{full_name}.{f.name}"))
            if self._required(full_name, f, roles):
                required.append(name)
        schema = {"type": "object"}
        description = (
            STATUS_DESCRIPTION if full_name == STATUS else self.protos.comments.get(full_name, "")
        )
        oneofs = [
            [
                self.json_name(f)
                for f in message.field
                if f.HasField("oneof_index") and f.oneof_index == i and not f.proto3_optional
            ]
            for i in range(len(message.oneof_decl))
        ]
        for members in filter(None, oneofs):
            names = ", ".join(f"`{m}`" for m in members)
            description = f"{description}\n\nAt most one of {names}.".strip()
        if description:
            schema["description"] = description
        if required:
            schema["required"] = required
        if REQUEST in roles:
            # Other fields are ignored, but not every name is another field:
            # the transcoder refuses an empty one, and reads a field's proto
            # name as that field (an alias clients need not know).
            names: JSON = {"minLength": 1}
            aliases = sorted({f.name for f in message.field} - set(properties))
            if aliases:
                names["not"] = {"enum": aliases}
            schema["propertyNames"] = names
        if full_name in ERROR_DETAILS:
            schema["required"] = ["@type", *required]
            properties = {"@type": {"const": _type_url(full_name)}, **properties}
        schema["properties"] = properties
        return schema

    def _required(self, full_name: str, f: Field, roles: set[str]) -> bool:
        if ERROR in roles:
            return f.name in ERROR_FIELDS.get(full_name, ())
        asked = field_behavior_pb2.REQUIRED in _behaviors(f)
        # The transcoder prints every field without presence, set or not.
        printed = self.transcoder.always_print and not _has_presence(f)
        if roles == {REQUEST}:
            return asked
        if roles == {REPLY}:
            return printed
        return asked and printed

    def field_schema(self, f: Field, roles: set[str]) -> JSON:
        if self.is_map(f):
            entry = self.protos.messages[f.type_name]
            return {"type": "object", "additionalProperties": self._single(entry.field[1], roles)}
        single = self._single(f, roles)
        if f.label == Field.LABEL_REPEATED:
            return {"type": "array", "items": single}
        return single

    def _single(self, f: Field, roles: set[str]) -> JSON:
        if f.type in SCALARS:
            return dict(SCALARS[f.type])
        if f.type in _64_BIT:
            fmt, pattern = _64_BIT[f.type]
            # Printed as strings; read from numbers or strings.
            kinds = ["string"] if roles == {REPLY} else ["integer", "string"]
            return {
                "type": kinds if len(kinds) > 1 else kinds[0],
                "format": fmt,
                "pattern": pattern,
            }
        if f.type_name in WELL_KNOWN:
            return dict(WELL_KNOWN[f.type_name])
        return self.ref(f.type_name)


def _type_url(full_name: str) -> str:
    return f"type.googleapis.com/{full_name.lstrip('.')}"


def _described(schema: JSON, comment: str | None) -> JSON:
    if comment:
        schema["description"] = comment
    return schema


# --------------------------------------------------------------------------
# Errors: which statuses an operation can get, and what each means
# --------------------------------------------------------------------------
def _provider_codes() -> set[int]:
    """Every code a provider's domain error carries (providers/values.py),
    and the misconfigured provider (server/errors.py)."""
    codes = {code_pb2.FAILED_PRECONDITION, code_pb2.INTERNAL}
    pending: list[type[ProviderError]] = [ProviderError]
    while pending:
        cls = pending.pop()
        codes.add(code_pb2.Code.Value(cls.code))
        pending += cls.__subclasses__()
    return codes


def _edge_replies() -> dict[int, list[tuple[int, str, str]]]:
    """Envoy's own error replies by HTTP status: (code, reason, message)."""
    replies: dict[int, list[tuple[int, str, str]]] = {}
    for status, reply in edge.LOCAL_REPLIES.items():
        replies.setdefault(status, []).append(reply)
    replies[400].append(edge.INVALID_HEADER)
    return replies


@dataclass
class Errors:
    edge: dict[int, list[tuple[int, str, str]]]
    # HTTP status -> the gRPC codes some server answer maps to it.
    server: dict[int, set[int]] = field(default_factory=dict)

    def for_rpc(self, codes: Iterable[int]) -> list[int]:
        from_server = {HTTP_OF_CODE[code] for code in codes}
        for code in codes:
            self.server.setdefault(HTTP_OF_CODE[code], set()).add(code)
        from_edge = set(self.edge) - EDGE_NOT_FOR_OPERATIONS
        return sorted(from_server | from_edge)

    def responses(self, statuses: Iterable[int]) -> JSON:
        return {str(s): {"$ref": f"#/components/responses/Error{s}"} for s in sorted(statuses)}

    def components(self, used: set[int]) -> JSON:
        out: JSON = {}
        for status in sorted(used):
            out[f"Error{status}"] = {
                "description": self._description(status),
                "headers": _headers(status),
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Status"}}
                },
            }
        return out

    def _description(self, status: int) -> str:
        parts = []
        codes = sorted(self.server.get(status, ()))
        if codes:
            names = " or ".join(code_pb2.Code.Name(c) for c in codes)
            parts.append(f"A server's refusal, {names}: ErrorInfo.reason says why.")
        edge_replies = [r for r in self.edge.get(status, []) if status not in {404, 405}]
        if edge_replies:
            lines = [
                f"`{reason}` ({code_pb2.Code.Name(code)}): {message}"
                for code, reason, message in edge_replies
            ]
            parts.append("The edge's own: " + "; ".join(lines) + ".")
        if status in RETRY_AFTER_STATUSES:
            parts.append("Retry after the RetryInfo delay or the `Retry-After` header, if sent.")
        return " ".join(parts)


def _headers(status: int | None = None) -> JSON:
    request_id = "RequestIdIfRead" if status in UNREAD_STATUSES else "RequestId"
    headers: JSON = {"x-request-id": {"$ref": f"#/components/headers/{request_id}"}}
    if status in RETRY_AFTER_STATUSES:
        headers["retry-after"] = {"$ref": "#/components/headers/RetryAfter"}
    return headers


# --------------------------------------------------------------------------
# Operations
# --------------------------------------------------------------------------
_VERBS = ("get", "put", "post", "delete", "patch")
_TEMPLATE_VARIABLE = re.compile(r"\{([a-zA-Z0-9_.]+)(?:=\*)?\}")


def _bindings(rule: http_pb2.HttpRule) -> Iterator[tuple[str, str, http_pb2.HttpRule]]:
    for one in [rule, *rule.additional_bindings]:
        pattern = one.WhichOneof("pattern")
        if pattern == "custom":
            yield one.custom.kind.lower(), one.custom.path, one
        elif pattern in _VERBS:
            yield pattern, getattr(one, pattern), one


def _path(template: str) -> tuple[str, list[str]]:
    """The OpenAPI path and the proto field paths its variables bind."""
    if "{" in _TEMPLATE_VARIABLE.sub("", template):
        raise NotImplementedError(f"path template {template!r}: only {{field}} is supported")
    fields = _TEMPLATE_VARIABLE.findall(template)
    return _TEMPLATE_VARIABLE.sub(lambda m: "{" + m[1] + "}", template), fields


class Operations:
    def __init__(self, protos: Protos, schemas: Schemas, errors: Errors) -> None:
        self.protos = protos
        self.schemas = schemas
        self.errors = errors
        self.used_statuses: set[int] = set()
        self.paths: JSON = {}

    def add_service(self, full_name: str) -> None:
        service = self.protos.services[full_name]
        for method in service.method:
            rule = method.options.Extensions[annotations_pb2.http]
            for index, (verb, template, binding) in enumerate(_bindings(rule)):
                operation = self._operation(full_name, method, binding, index, template)
                path, _ = _path(template)
                self.paths.setdefault(path, {})[verb] = operation

    def _operation(
        self,
        service: str,
        method: descriptor_pb2.MethodDescriptorProto,
        binding: http_pb2.HttpRule,
        index: int,
        template: str,
    ) -> JSON:
        request = self.protos.messages[method.input_type]
        _, path_fields = _path(template)
        comment = self.protos.comments.get(f"{service}.{method.name}", "")
        operation: JSON = {
            "operationId": method.name if index == 0 else f"{method.name}{index + 1}",
            "tags": [service.rsplit(".", 1)[-1]],
        }
        if comment:
            operation["summary"] = _summary(comment)
            operation["description"] = comment
        if index:
            primary = next(_bindings(method.options.Extensions[annotations_pb2.http]))
            operation["description"] = (
                f"{comment}\n\nThe same call as `{method.name}` (`{primary[1]}`), on this path."
            ).strip()
        parameters = [self._path_parameter(method.input_type, p) for p in path_fields]
        body_fields: set[str] = set()
        if binding.body == "*":
            body_fields = {f.name for f in request.field} - {p.split(".")[0] for p in path_fields}
            self.schemas.use(method.input_type, REQUEST)
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": self._body(method.input_type, path_fields)}
                },
            }
        elif binding.body:
            [body] = [f for f in request.field if f.name == binding.body]
            body_fields = {body.name}
            if body.type_name:
                self.schemas.use(body.type_name, REQUEST)
            operation["requestBody"] = {
                "required": field_behavior_pb2.REQUIRED in _behaviors(body),
                "content": {
                    "application/json": {"schema": self.schemas.field_schema(body, {REQUEST})}
                },
            }
        query = [
            f for f in request.field if f.name not in body_fields and f.name not in path_fields
        ]
        parameters += self._query(method.input_type, query, prefix="", required=True)
        if parameters:
            operation["parameters"] = parameters
        operation["responses"] = self._responses(method, binding, request)
        if any(f.name == "provider" for f in request.field):
            # servicer.py reads the caller's Authorization on every provider
            # call: a provider may need it, and a malformed one is refused.
            operation["security"] = [{}, {BEARER: []}]
        return operation

    def _body(self, message: str, path_fields: list[str]) -> JSON:
        if not path_fields:
            return self.schemas.ref(message)
        schema = self.schemas._message(message, {REQUEST})
        for name in path_fields:
            schema["properties"].pop(name, None)
        return schema

    def _path_parameter(self, message: str, field_path: str) -> JSON:
        f = self._field(message, field_path)
        return {
            "name": field_path,
            "in": "path",
            "required": True,
            "schema": self.schemas.field_schema(f, {REQUEST}),
        }

    def _field(self, message: str, field_path: str) -> Field:
        head, _, rest = field_path.partition(".")
        [f] = [f for f in self.protos.messages[message].field if f.name == head]
        return self._field(f.type_name, rest) if rest else f

    def _query(
        self, message: str, fields: list[Field], *, prefix: str, required: bool
    ) -> list[JSON]:
        parameters = []
        for f in fields:
            name = prefix + self.schemas.json_name(f)
            asked = required and field_behavior_pb2.REQUIRED in _behaviors(f)
            if self.schemas.is_map(f) or f.type_name in _NOT_IN_QUERY:
                continue
            if f.type == Field.TYPE_MESSAGE and f.type_name not in WELL_KNOWN:
                nested = self.protos.messages[f.type_name]
                parameters += self._query(
                    f.type_name, list(nested.field), prefix=f"{name}.", required=asked
                )
                continue
            if f.type_name:
                self.schemas.use(f.type_name, REQUEST)
            parameter: JSON = {"name": name, "in": "query", "required": asked}
            comment = self.protos.comments.get(f"{message}.{f.name}")
            if comment:
                parameter["description"] = comment
            parameter["schema"] = self.schemas.field_schema(f, {REQUEST})
            parameters.append(parameter)
        return parameters

    def _responses(
        self,
        method: descriptor_pb2.MethodDescriptorProto,
        binding: http_pb2.HttpRule,
        request: Message,
    ) -> JSON:
        reply = self.protos.messages[method.output_type]
        if binding.response_body:
            [body] = [f for f in reply.field if f.name == binding.response_body]
            if body.type_name:
                self.schemas.use(body.type_name, REPLY)
            schema = self.schemas.field_schema(body, {REPLY})
        else:
            self.schemas.use(method.output_type, REPLY)
            schema = self.schemas.ref(method.output_type)
        codes = set(EVERY_RPC)
        names = {f.name for f in request.field}
        if "project_id" in names:
            codes |= PROJECT_RPC
        if "provider" in names:
            codes |= _provider_codes()
        statuses = self.errors.for_rpc(codes)
        self.used_statuses |= set(statuses)
        summary = _summary(self.protos.comments.get(method.output_type, "")) or "OK"
        return {
            "200": {
                "description": summary,
                "headers": _headers(),
                "content": {"application/json": {"schema": schema}},
            },
            **self.errors.responses(statuses),
        }

    def add_edge_routes(self) -> None:
        healthz = [400, 408, 426, 431, 503]
        document = [400, 408, 413, 426, 431]
        self.used_statuses |= set(healthz) | set(document)
        self.paths[HEALTHZ] = {
            "get": {
                "operationId": "Healthz",
                "tags": ["Edge"],
                "summary": "Whether the edge has a healthy server behind it.",
                "description": (
                    "Answered by Envoy from the servers' gRPC health checks: 200 while at least"
                    " one server is serving, 503 BACKEND_UNAVAILABLE when none is."
                ),
                "responses": {
                    "200": {
                        "description": "At least one server is serving.",
                        "headers": _headers(),
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Health"}}
                        },
                    },
                    **self.errors.responses(healthz),
                },
            }
        }
        self.paths[DOCUMENT_PATH] = {
            "get": {
                "operationId": "GetOpenApiDocument",
                "tags": ["Edge"],
                "summary": "This document.",
                "responses": {
                    "200": {
                        "description": "The OpenAPI document of this API, as YAML.",
                        "headers": _headers(),
                        "content": {DOCUMENT_TYPE: {"schema": {"type": "object"}}},
                    },
                    **self.errors.responses(document),
                },
            }
        }


# --------------------------------------------------------------------------
# The document
# --------------------------------------------------------------------------
def document(files: descriptor_pb2.FileDescriptorSet) -> JSON:
    protos = Protos.index(files)
    transcoder = Transcoder.from_edge()
    schemas = Schemas(protos, transcoder)
    errors = Errors(_edge_replies())
    operations = Operations(protos, schemas, errors)
    tags = []
    for service in transcoder.services:
        operations.add_service(f".{service}")
        tags.append(
            _described({"name": service.rsplit(".", 1)[-1]}, protos.comments.get(f".{service}"))
        )
    operations.add_edge_routes()
    tags.append({"name": "Edge", "description": "Answered by the edge (Envoy) itself."})
    schemas.use(STATUS, ERROR)
    for detail in ERROR_DETAILS:
        schemas.use(detail, ERROR)
    components = schemas.build()
    components["Health"] = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "SERVING"}},
    }
    file = protos.files[f".{transcoder.services[0]}"]
    query_rule = (
        " A query parameter the call does not define is refused (400 `MALFORMED_REQUEST`)."
        if transcoder.reject_unknown_query
        else ""
    )
    description = (
        f"{protos.comments[file.name]}\n\n"
        "Every call is gRPC inside; Envoy transcodes this REST API into it. `GET` calls take"
        " their fields in the query string, `POST` and `PUT` a JSON body."
        + query_rule
        + " Every reply carries `x-request-id`; quote it when reporting a problem.\n\n"
        "Generated by `make generate` from protos/ (scripts/openapi.py); never edited by hand."
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Identify",
            "version": file.package.rsplit(".", 1)[-1],
            "description": description,
        },
        "servers": [{"url": "/", "description": "The edge that serves this document."}],
        "tags": tags,
        "paths": operations.paths,
        "components": {
            "schemas": components,
            "responses": errors.components(operations.used_statuses),
            "headers": {
                "RequestId": {
                    "description": "The request's id, as in the edge's and the servers' logs.",
                    "required": True,
                    "schema": {"type": "string"},
                },
                "RequestIdIfRead": {
                    "description": (
                        "The request's id; absent when the edge refused the request before"
                        " reading it whole."
                    ),
                    "schema": {"type": "string"},
                },
                "RetryAfter": {
                    "description": "Whole seconds to wait before trying again.",
                    "schema": {"type": "integer", "minimum": 0},
                },
            },
            "securitySchemes": {
                BEARER: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "`Authorization: Bearer <token>`: the provider's token (an access or ID"
                        " token) where a call needs one; see each provider in the README."
                    ),
                }
            },
        },
    }


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)

HEADER = "# Generated by `make generate` (scripts/openapi.py) from protos/: never edit by hand.\n"


def render(files: descriptor_pb2.FileDescriptorSet) -> str:
    text = yaml.dump(
        document(files), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100
    )
    return HEADER + text
