"""The projects file: which projects exist and which providers each enables.

```yaml
projects:
  - id: 5d5b0676-ce0f-4058-b2bf-49af49f61cb5
    name: demo
    providers:
      anonymous: {}
      noLogin: {}
    limits:                # optional: abuse limits (server/abuse/policy.py)
      anonymousSignUp: {perIp: 30/hour}
    anonymousRetentionDays: 365   # optional: purge anonymous users idle this long
```
Provider settings use camelCase names. A secret may be written `${ENV_VAR}`:
the reference is stored as written and resolved in each process from its own
environment, so secrets never land in the database.
"""

from __future__ import annotations

import os
import pathlib
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from providers.registry import Registry
from server.abuse.policy import parse_limits

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ProjectConfig:
    id: str
    name: str
    providers: Mapping[str, Mapping[str, Any]]
    # The `limits:` block as written (None: the defaults); see server/abuse/policy.py.
    limits: Mapping[str, Any] | None = None
    # Anonymous users with no login for this many days are purged (None: kept).
    anonymous_retention_days: int | None = None


def resolve_env(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """Replace ${VAR} in every string of a settings tree."""
    env = os.environ if environ is None else environ

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ConfigError(f"environment variable {name} is not set")
        return env[name]

    if isinstance(value, str):
        return _ENV_REF.sub(sub, value)
    if isinstance(value, Mapping):
        return {k: resolve_env(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_env(v, env) for v in value]
    return value


def load(path: pathlib.Path, registry: Registry) -> list[ProjectConfig]:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    return parse(raw, registry, source=str(path))


def parse(raw: Any, registry: Registry, *, source: str = "config") -> list[ProjectConfig]:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("projects"), list):
        raise ConfigError(f"{source}: expected a top-level 'projects' list")
    seen: set[str] = set()
    result = []
    for index, entry in enumerate(raw["projects"]):
        project = parse_project(entry, registry, where=f"{source}: projects[{index}]")
        if project.id in seen:
            raise ConfigError(f"{source}: projects[{index}]: duplicate project id {project.id}")
        seen.add(project.id)
        result.append(project)
    return result


MAX_NAME_CHARS = 200
# Ten years: a longer retention is a typo, not a policy.
MAX_ANONYMOUS_RETENTION_DAYS = 3650


def parse_project(entry: Any, registry: Registry, *, where: str) -> ProjectConfig:
    """THE check of one project's settings, for the YAML file and the admin
    API alike (the same messages, prefixed with `where`)."""
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: expected a mapping")
    try:
        project_id = str(uuid.UUID(str(entry.get("id"))))
    except ValueError:
        raise ConfigError(f"{where}: id must be a UUID") from None
    name = entry.get("name") or project_id
    if len(str(name)) > MAX_NAME_CHARS:
        # The column's bound, so both stores refuse the same names.
        raise ConfigError(f"{where}: name must be at most {MAX_NAME_CHARS} characters")
    providers = entry.get("providers") or {}
    if not isinstance(providers, Mapping) or not providers:
        raise ConfigError(f"{where}: 'providers' must name at least one provider")
    checked: dict[str, Mapping[str, Any]] = {}
    for provider_name, settings in providers.items():
        settings = settings or {}
        if not isinstance(settings, Mapping):
            raise ConfigError(f"{where}.providers.{provider_name}: settings must be a mapping")
        cls = registry.get(provider_name)
        if cls is None:
            missing = registry.broken(provider_name)
            why = missing.why if missing else "unknown provider"
            known = ", ".join(registry.names())
            raise ConfigError(f"{where}.providers.{provider_name}: {why} (available: {known})")
        try:
            cls.validate_settings(resolve_env(settings))
        except ValueError as exc:
            raise ConfigError(f"{where}.providers.{provider_name}: {exc}") from None
        checked[provider_name] = dict(settings)
    limits = entry.get("limits")
    if limits is not None and not isinstance(limits, Mapping):
        raise ConfigError(f"{where}.limits: must be a mapping")
    try:
        parse_limits(limits)
    except ValueError as exc:
        raise ConfigError(f"{where}.limits: {exc}") from None
    retention = entry.get("anonymousRetentionDays")
    # bool is an int to Python; `true` in YAML is no number of days.
    if retention is not None and (
        isinstance(retention, bool)
        or not isinstance(retention, int)
        or not 1 <= retention <= MAX_ANONYMOUS_RETENTION_DAYS
    ):
        raise ConfigError(
            f"{where}.anonymousRetentionDays: must be a whole number of days"
            f" from 1 to {MAX_ANONYMOUS_RETENTION_DAYS} (leave it out to keep them forever)"
        )
    return ProjectConfig(
        project_id, str(name), checked, dict(limits) if limits else None, retention
    )
