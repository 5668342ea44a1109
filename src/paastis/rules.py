"""The rules file (`paastis.yml`): routing rules and the local provider's apps."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from croniter import croniter

from paastis.errors import ConfigError

# The fields a rule may set, as named in the file.
RULE_FIELDS = (
    "app_name",
    "app_max_idle_time",
    "linked_apps",
    "upstream",
    "readiness_path",
    "keep_awake",
)
RULE_KEYS = frozenset({"pattern", *RULE_FIELDS})
LOCAL_APP_KEYS = frozenset({"upstream", "command", "start", "stop", "status"})
TEMPLATE_KEYS = ("app_name", "linked_apps", "upstream")
# `$N` takes at most two digits, like JavaScript's String.replace: `$10` is group 10 when the
# pattern has 10 groups, and group 1 followed by "0" otherwise.
GROUP_REFERENCE = re.compile(r"\$(\d\d?)")
# Beyond this, `timedelta(minutes=...)` overflows; a century is already "never".
MAX_IDLE_MINUTES = 100 * 365 * 24 * 60


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern[str]
    app_name: str | None = None
    app_max_idle_time: float | None = None
    linked_apps: tuple[str, ...] | None = None
    upstream: str | None = None
    readiness_path: str | None = None
    keep_awake: str | None = None  # a 5-field cron expression


@dataclass(frozen=True)
class Route:
    """What the rules say about one app key."""

    app_name: str
    max_idle_time: float  # minutes
    linked_apps: tuple[str, ...]
    upstream: str | None  # None: UPSTREAM_URL_TEMPLATE or the provider's URL
    readiness_path: str | None  # None: PROXY_READINESS_PATH
    keep_awake: str | None = None  # cron (SCHEDULE_TIMEZONE): kept awake while it matches


class RuleSet:
    """Applies every matching rule, in file order, a later one overriding what it sets.

    For a request, the rules matching its app key decide, and every field they set applies to
    the target app (`app_name`); the rules matching the target's own name fill in the fields
    the key's rules leave unset; the defaults fill in the rest. An app found by discovery gets
    the rules matching its provider name.
    """

    def __init__(self, rules: list[Rule], default_max_idle_time: float) -> None:
        self.rules = tuple(rules)
        self.default_max_idle_time = default_max_idle_time
        # Resolution is pure, and the same few keys come back on every request.
        self.resolve = functools.lru_cache(maxsize=4096)(self._resolve)
        self.for_app = functools.lru_cache(maxsize=4096)(self._for_app)

    def _resolve(self, key: str) -> Route:
        """Where a request for the app key `key` goes, and what applies to that app."""
        own = self._fields(key)
        target = own.pop("app_name", key)
        inherited = self._fields(target) if target != key else {}
        inherited.pop("app_name", None)
        return self._route(target, {**inherited, **own})

    def _for_app(self, name: str) -> Route:
        """What applies to the provider app `name` by the rules matching its own name."""
        fields = self._fields(name)
        fields.pop("app_name", None)
        return self._route(name, fields)

    def _route(self, app_name: str, fields: dict[str, Any]) -> Route:
        linked = fields.get("linked_apps", ())
        return Route(
            app_name=app_name,
            max_idle_time=fields.get("app_max_idle_time", self.default_max_idle_time),
            linked_apps=tuple(dict.fromkeys(n for n in linked if n and n != app_name)),
            upstream=fields.get("upstream"),
            readiness_path=fields.get("readiness_path"),
            keep_awake=fields.get("keep_awake"),
        )

    def _fields(self, key: str) -> dict[str, Any]:
        """The fields set by the rules matching `key`, `$N` substituted, a later rule winning."""
        fields: dict[str, Any] = {}
        for rule in self.rules:
            match = rule.pattern.search(key)
            if match is None:
                continue
            for name in RULE_FIELDS:
                value = getattr(rule, name)
                if value is None:
                    continue
                if name in TEMPLATE_KEYS:
                    value = (
                        tuple(substitute(item, match) for item in value)
                        if isinstance(value, tuple)
                        else substitute(value, match)
                    )
                fields[name] = value
        return fields

    def linked_closure(
        self, app_name: str, linked_apps: Iterable[str] | None = None
    ) -> tuple[str, ...]:
        """`linked_apps` (default: the app's own) and the apps linked to them by their own
        rules, transitively, without `app_name` (cycles end)."""
        seen = {app_name}
        order: list[str] = []
        pending = list(self.for_app(app_name).linked_apps if linked_apps is None else linked_apps)
        while pending:
            name = pending.pop(0)
            if name in seen:
                continue
            seen.add(name)
            order.append(name)
            pending.extend(self.for_app(name).linked_apps)
        return tuple(order)


def substitute(template: str, match: re.Match[str]) -> str:
    """Replaces `$N` with the N-th group of the match (empty when the group did not take part).

    A reference to a group the pattern does not have stays as written (the rules file is
    checked for those when loaded).
    """

    def group(ref: re.Match[str]) -> str:
        index, rest = group_reference(ref.group(1), match.re.groups)
        if index is None:
            return ref.group(0)
        return (match.group(index) or "") + rest

    return GROUP_REFERENCE.sub(group, template)


def group_reference(digits: str, groups: int) -> tuple[int | None, str]:
    """The group that `$<digits>` names in a pattern with `groups` groups, and the digit left
    over as text; None when it names no group."""
    if int(digits) <= groups:
        return int(digits), ""
    if len(digits) == 2 and int(digits[0]) <= groups:
        return int(digits[0]), digits[1]
    return None, ""


def missing_groups(template: str, groups: int) -> list[str]:
    """The `$N` references in `template` that name no group of a pattern with `groups` groups."""
    return [
        ref.group(0)
        for ref in GROUP_REFERENCE.finditer(template)
        if group_reference(ref.group(1), groups)[0] is None
    ]


@dataclass(frozen=True)
class LocalAppSpec:
    """One app of the `apps:` section: either `command`, or `start` + `stop` (+ `status`)."""

    name: str
    upstream: str
    command: str | None = None
    start: str | None = None
    stop: str | None = None
    status: str | None = None

    def __post_init__(self) -> None:
        where = f"local app {self.name!r}"
        if not self.name:
            raise ValueError("a local app needs a name")
        if not self.upstream:
            raise ValueError(f"{where}: `upstream` is required")
        for key in ("command", "start", "stop", "status"):
            value = getattr(self, key)
            if value is not None and not value.strip():
                raise ValueError(f"{where}: `{key}` must not be empty")
        if self.command is not None:
            if any(v is not None for v in (self.start, self.stop, self.status)):
                raise ValueError(
                    f"{where}: give either `command`, or `start` and `stop` "
                    "(with an optional `status`), not both"
                )
        elif self.start is None or self.stop is None:
            raise ValueError(
                f"{where}: needs either `command`, or both `start` and `stop` "
                "(with an optional `status`)"
            )


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
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the rules file is not UTF-8 text") from None
    return parse_rules(text, source=str(path))


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in a mapping is an error (PyYAML
    would silently keep the last one, hiding a typo)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_rules(text: str, *, source: str) -> RulesFile:
    document = load_yaml(text, source)
    if document is None:
        return RulesFile([], {})
    if not isinstance(document, dict):
        raise ConfigError(
            f"{source}: expected a mapping with `rules` and/or `apps`, got {type_name(document)}"
        )
    unknown = [key for key in document if key not in ("rules", "apps")]
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key {unknown[0]!r} (accepted: rules, apps)")
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


def load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}: invalid YAML{line}: {one_line(problem)}") from None


def parse_rule(item: Any, index: int, source: str) -> Rule:
    where = f"{source}: rule {index}"
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected a mapping with a 'pattern', got {type_name(item)}")
    for key in item:
        if key not in RULE_KEYS:
            raise ConfigError(
                f"{where}: unknown key {key!r} (accepted: {', '.join(sorted(RULE_KEYS))})"
            )
    pattern = parse_pattern(item, where)
    app_name = expect_str(item, "app_name", where)
    if app_name is not None and not app_name.strip():
        raise ConfigError(f"{where}, key 'app_name': expected an app name, got {app_name!r}")
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
    rule = Rule(
        pattern=pattern,
        app_name=app_name,
        app_max_idle_time=parse_idle_time(item, where),
        linked_apps=parse_linked_apps(item, where),
        upstream=upstream,
        readiness_path=readiness,
        keep_awake=parse_keep_awake(item, where),
    )
    check_group_references(rule, where)
    return rule


def parse_keep_awake(item: Mapping[str, Any], where: str) -> str | None:
    value = expect_str(item, "keep_awake", where)
    if value is None:
        return None
    expression = value.strip()
    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        raise ConfigError(
            f"{where}, key 'keep_awake': {value!r} is not a valid cron expression (expected 5 "
            "fields: minute hour day-of-month month day-of-week, e.g. '* 8-18 * * 1-5')"
        )
    return expression


def parse_pattern(item: Mapping[str, Any], where: str) -> re.Pattern[str]:
    if item.get("pattern") is None:
        raise ConfigError(
            f"{where}: key 'pattern' is required (a regular expression searched in the app key)"
        )
    text = expect_str(item, "pattern", where)
    assert text is not None
    try:
        return re.compile(text)
    except re.error as exc:
        raise ConfigError(
            f"{where}, key 'pattern': invalid regular expression {quoted(text)} ({exc})"
        ) from None


def parse_idle_time(item: Mapping[str, Any], where: str) -> float | None:
    idle = item.get("app_max_idle_time")
    if idle is None:
        return None
    if (
        isinstance(idle, bool)
        or not isinstance(idle, int | float)
        or not math.isfinite(idle)
        or not 0 <= idle <= MAX_IDLE_MINUTES
    ):
        raise ConfigError(
            f"{where}, key 'app_max_idle_time': expected a number of minutes from 0 to "
            f"{MAX_IDLE_MINUTES} (decimals allowed), got {idle!r}"
        )
    return float(idle)


def parse_linked_apps(item: Mapping[str, Any], where: str) -> tuple[str, ...] | None:
    linked = item.get("linked_apps")
    if linked is None:
        return None
    if not isinstance(linked, list) or not all(
        isinstance(name, str) and name.strip() for name in linked
    ):
        raise ConfigError(
            f"{where}, key 'linked_apps': expected a list of app names, got {linked!r}"
        )
    return tuple(linked)


def check_group_references(rule: Rule, where: str) -> None:
    """A `$N` naming a group the pattern lacks is a mistake worth reporting at start-up."""
    groups = rule.pattern.groups
    for key in TEMPLATE_KEYS:
        value = getattr(rule, key)
        for template in value if isinstance(value, tuple) else (value,):
            missing = missing_groups(template, groups) if template else []
            if missing:
                raise ConfigError(
                    f"{where}, key {key!r}: {missing[0]} in {quoted(template)} names no group "
                    f"of the pattern {quoted(rule.pattern.pattern)} (it has {groups})"
                )


def parse_local_app(name: str, spec: Any, source: str) -> LocalAppSpec:
    where = f"{source}: app {name!r}"
    if not isinstance(spec, dict):
        raise ConfigError(
            f"{where}: expected a mapping with `upstream` and `command` (or `start` and "
            f"`stop`), got {type_name(spec)}"
        )
    for key in spec:
        if key not in LOCAL_APP_KEYS:
            raise ConfigError(
                f"{where}: unknown key {key!r} (accepted: {', '.join(sorted(LOCAL_APP_KEYS))})"
            )
    fields = {key: expect_str(spec, key, where) for key in LOCAL_APP_KEYS}
    for key, value in fields.items():
        if value is not None and not value.strip():
            raise ConfigError(f"{where}, key {key!r}: must not be empty")
    upstream = fields["upstream"]
    if upstream is None:
        raise ConfigError(f"{where}: key 'upstream' is required (e.g. http://127.0.0.1:8001)")
    if not upstream.startswith(("http://", "https://")):
        raise ConfigError(
            f"{where}, key 'upstream': expected an http:// or https:// URL, got {upstream!r}"
        )
    check_local_commands(fields, where)
    return LocalAppSpec(name=name, **fields)


def check_local_commands(fields: Mapping[str, str | None], where: str) -> None:
    if fields["command"] is not None:
        extra = [key for key in ("start", "stop", "status") if fields[key] is not None]
        if extra:
            raise ConfigError(
                f"{where}: keys 'command' and {extra[0]!r} cannot be used together (give "
                "either `command`, or `start` and `stop` with an optional `status`)"
            )
        return
    missing = [key for key in ("start", "stop") if fields[key] is None]
    if missing:
        raise ConfigError(
            f"{where}: key {missing[0]!r} is missing (give either `command`, or `start` and "
            "`stop` with an optional `status`)"
        )


def expect_str(item: Mapping[str, Any], key: str, where: str) -> str | None:
    value = item.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}, key {key!r}: expected a string, got {value!r}")
    return value


def quoted(text: str) -> str:
    """`text` in quotes as written: the backslashes of a regular expression are shown as
    typed, not doubled as repr() would double them."""
    return f"'{text}'"


def type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string"}.get(type(value), repr(value))


def one_line(text: str) -> str:
    return " ".join(text.split())
