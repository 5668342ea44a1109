"""The rules file (`paastis.yml`): routing rules and the local provider's apps."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from paastis.errors import ConfigError
from paastis.providers.local import LocalAppSpec

RULE_KEYS = frozenset(
    {"pattern", "app_name", "app_max_idle_time", "linked_apps", "upstream", "readiness_path"}
)
LOCAL_APP_KEYS = frozenset({"upstream", "command", "start", "stop", "status"})
GROUP_REFERENCE = re.compile(r"\$(\d+)")


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern[str]
    app_name: str | None = None
    app_max_idle_time: float | None = None
    linked_apps: tuple[str, ...] | None = None
    upstream: str | None = None
    readiness_path: str | None = None


@dataclass(frozen=True)
class Route:
    """What the rules say about one app key."""

    app_name: str
    max_idle_time: float  # minutes
    linked_apps: tuple[str, ...]
    upstream: str | None  # None: UPSTREAM_URL_TEMPLATE or the provider's URL
    readiness_path: str | None  # None: PROXY_READINESS_PATH


class RuleSet:
    """Applies every matching rule, in file order, a later one overriding what it sets."""

    def __init__(self, rules: list[Rule], default_max_idle_time: float) -> None:
        self.rules = tuple(rules)
        self.default_max_idle_time = default_max_idle_time
        # Resolution is pure, and the same few keys come back on every request.
        self.resolve = functools.lru_cache(maxsize=4096)(self._resolve)

    def _resolve(self, key: str) -> Route:
        app_name, max_idle, linked, upstream, readiness = (
            key,
            self.default_max_idle_time,
            (),
            None,
            None,
        )
        for rule in self.rules:
            match = rule.pattern.search(key)
            if match is None:
                continue
            if rule.app_name is not None:
                app_name = substitute(rule.app_name, match)
            if rule.app_max_idle_time is not None:
                max_idle = rule.app_max_idle_time
            if rule.linked_apps is not None:
                linked = tuple(substitute(name, match) for name in rule.linked_apps)
            if rule.upstream is not None:
                upstream = substitute(rule.upstream, match)
            if rule.readiness_path is not None:
                readiness = rule.readiness_path
        linked = tuple(dict.fromkeys(name for name in linked if name and name != app_name))
        return Route(app_name, max_idle, linked, upstream, readiness)

    def linked_closure(self, app_name: str) -> tuple[str, ...]:
        """Every app linked to `app_name`, transitively, without `app_name` (cycles end)."""
        seen = {app_name}
        order: list[str] = []
        pending = list(self.resolve(app_name).linked_apps)
        while pending:
            name = pending.pop(0)
            if name in seen:
                continue
            seen.add(name)
            order.append(name)
            pending.extend(self.resolve(name).linked_apps)
        return tuple(order)


def substitute(template: str, match: re.Match[str]) -> str:
    """Replaces `$N` with the N-th group of the match (empty when the group did not take part)."""

    def group(ref: re.Match[str]) -> str:
        index = int(ref.group(1))
        if index > (match.re.groups or 0):
            return ref.group(0)
        return match.group(index) or ""

    return GROUP_REFERENCE.sub(group, template)


@dataclass(frozen=True)
class RulesFile:
    rules: list[Rule]
    apps: dict[str, LocalAppSpec]


def load_rules_file(path: Path) -> RulesFile:
    """Reads and validates `paastis.yml`; raises ConfigError naming the file, rule and key."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the rules file ({exc.strerror})") from None
    return parse_rules(text, source=str(path))


def parse_rules(text: str, *, source: str) -> RulesFile:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise ConfigError(f"{source}: invalid YAML{line}: {getattr(exc, 'problem', exc)}") from None
    if document is None:
        return RulesFile([], {})
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: expected a mapping with `rules` and `apps`")
    unknown = set(document) - {"rules", "apps"}
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level key {sorted(unknown)[0]!r} (accepted: rules, apps)"
        )
    rules_doc = document.get("rules") or []
    if not isinstance(rules_doc, list):
        raise ConfigError(f"{source}: `rules` must be a list, got {type_name(rules_doc)}")
    rules = [parse_rule(item, index, source) for index, item in enumerate(rules_doc, start=1)]
    apps_doc = document.get("apps") or {}
    if not isinstance(apps_doc, dict):
        raise ConfigError(
            f"{source}: `apps` must be a mapping of app names, got {type_name(apps_doc)}"
        )
    apps = {str(name): parse_local_app(str(name), spec, source) for name, spec in apps_doc.items()}
    return RulesFile(rules, apps)


def parse_rule(item: Any, index: int, source: str) -> Rule:
    where = f"{source}: rule {index}"
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type_name(item)}")
    for key in item:
        if key not in RULE_KEYS:
            raise ConfigError(
                f"{where}: unknown key {key!r} (accepted: {', '.join(sorted(RULE_KEYS))})"
            )
    if "pattern" not in item:
        raise ConfigError(f"{where}: key 'pattern' is required")
    pattern_text = expect_str(item, "pattern", where)
    try:
        pattern = re.compile(pattern_text)
    except re.error as exc:
        raise ConfigError(
            f"{where}, key 'pattern': invalid regular expression {pattern_text!r} ({exc})"
        ) from None
    idle = item.get("app_max_idle_time")
    if idle is not None and (
        isinstance(idle, bool) or not isinstance(idle, int | float) or idle < 0
    ):
        raise ConfigError(
            f"{where}, key 'app_max_idle_time': expected a number of minutes >= 0, got {idle!r}"
        )
    linked = item.get("linked_apps")
    if linked is not None and (
        not isinstance(linked, list) or not all(isinstance(n, str) for n in linked)
    ):
        raise ConfigError(
            f"{where}, key 'linked_apps': expected a list of app names, got {linked!r}"
        )
    upstream = expect_str(item, "upstream", where)
    if upstream is not None and not upstream.startswith(("http://", "https://")):
        raise ConfigError(
            f"{where}, key 'upstream': expected an http:// or https:// URL, got {upstream!r}"
        )
    readiness = expect_str(item, "readiness_path", where)
    if readiness and not readiness.startswith("/"):
        raise ConfigError(
            f"{where}, key 'readiness_path': expected a path starting with '/' or '', "
            f"got {readiness!r}"
        )
    return Rule(
        pattern=pattern,
        app_name=expect_str(item, "app_name", where),
        app_max_idle_time=float(idle) if idle is not None else None,
        linked_apps=tuple(linked) if linked is not None else None,
        upstream=upstream,
        readiness_path=readiness,
    )


def parse_local_app(name: str, spec: Any, source: str) -> LocalAppSpec:
    where = f"{source}: app {name!r}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type_name(spec)}")
    for key in spec:
        if key not in LOCAL_APP_KEYS:
            raise ConfigError(
                f"{where}: unknown key {key!r} (accepted: {', '.join(sorted(LOCAL_APP_KEYS))})"
            )
    fields = {key: expect_str(spec, key, where) for key in LOCAL_APP_KEYS}
    if not fields["upstream"]:
        raise ConfigError(f"{where}: key 'upstream' is required (e.g. http://127.0.0.1:8001)")
    try:
        return LocalAppSpec(name=name, **fields)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def expect_str(item: Mapping[str, Any], key: str, where: str) -> str | None:
    value = item.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}, key {key!r}: expected a string, got {value!r}")
    return value


def type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string"}.get(type(value), repr(value))
