"""The rules file (DESIGN §4): its validation, and what the rules say about an app key."""

from __future__ import annotations

from pathlib import Path

import pytest

from paastis.errors import ConfigError
from paastis.rules import RuleSet, load_rules_file, parse_rules

SOURCE = "conf/paastis.yml"


def rules_of(text: str, default_max_idle_time: float = 15) -> RuleSet:
    return RuleSet(parse_rules(text, source=SOURCE).rules, default_max_idle_time)


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_rules(text, source=SOURCE)
    message = str(raised.value)
    assert message.startswith(SOURCE)
    assert "\n" not in message
    return message


# Validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("rules:\n  - pattern: a\n  - pattern: b\n    app_nmae: c\n", "app_nmae"),
        (
            "rules:\n  - pattern: a\n  - pattern: b\n    app_max_idle_time: ten\n",
            "app_max_idle_time",
        ),
        ("rules:\n  - pattern: a\n  - pattern: b\n    linked_apps: x\n", "linked_apps"),
        ("rules:\n  - pattern: a\n  - pattern: 42\n", "pattern"),
        ("rules:\n  - pattern: a\n  - pattern: '(unclosed'\n", "pattern"),
        ("rules:\n  - pattern: a\n  - app_name: b\n", "pattern"),
        ("rules:\n  - pattern: a\n  - pattern:\n", "pattern"),
        ("rules:\n  - pattern: a\n  - pattern: b\n    upstream: 'example.net'\n", "upstream"),
        ("rules:\n  - pattern: a\n  - pattern: b\n    readiness_path: health\n", "readiness_path"),
        ("rules:\n  - pattern: a\n  - pattern: b\n    app_name: 42\n", "app_name"),
        ("rules:\n  - pattern: a\n  - pattern: b\n    linked_apps: [1, 2]\n", "linked_apps"),
    ],
    ids=[
        "unknown-key",
        "idle-time-not-a-number",
        "linked-apps-not-a-list",
        "pattern-not-a-string",
        "bad-regex",
        "missing-pattern",
        "empty-pattern",
        "upstream-not-a-url",
        "readiness-path-without-slash",
        "app-name-not-a-string",
        "linked-apps-not-strings",
    ],
)
def test_bad_rule_names_the_file_the_rule_number_and_the_key(text: str, key: str) -> None:
    message = error_of(text)

    assert "rule 2" in message
    assert repr(key) in message


@pytest.mark.parametrize("idle", ["-1", ".nan", ".inf", "1.0e+20", "true"])
def test_bad_max_idle_time_in_a_rule_is_an_error(idle: str) -> None:
    message = error_of(f"rules:\n  - pattern: a\n    app_max_idle_time: {idle}\n")

    assert "rule 1, key 'app_max_idle_time'" in message
    assert "minutes" in message


def test_bad_regex_error_shows_the_pattern() -> None:
    assert "'(unclosed'" in error_of("rules:\n  - pattern: '(unclosed'\n")


def test_yaml_syntax_error_names_the_file_and_line() -> None:
    message = error_of("rules:\n  - pattern: a\n   app_name: [b\n")

    assert "invalid YAML" in message
    assert "line " in message


def test_duplicate_key_is_an_error() -> None:
    message = error_of("rules:\n  - pattern: a\n    pattern: b\n")

    assert "duplicate key 'pattern'" in message


def test_unknown_top_level_key_is_an_error() -> None:
    message = error_of("rule:\n  - pattern: a\n")

    assert "unknown top-level key 'rule'" in message
    assert "rules, apps" in message


def test_rules_that_are_not_a_list_is_an_error() -> None:
    assert "`rules` must be a list" in error_of("rules:\n  pattern: a\n")


def test_rule_that_is_not_a_mapping_is_an_error() -> None:
    assert "rule 1" in error_of("rules:\n  - 'a'\n")


def test_group_reference_beyond_the_patterns_groups_is_an_error() -> None:
    message = error_of("rules:\n  - pattern: 'app-(\\d+)'\n    app_name: 'app-$1-$2'\n")

    assert "rule 1, key 'app_name'" in message
    assert "$2" in message


def test_group_reference_in_linked_apps_is_checked_too() -> None:
    message = error_of("rules:\n  - pattern: 'app'\n    linked_apps: ['db-$1']\n")

    assert "rule 1, key 'linked_apps'" in message


def test_empty_file_has_no_rules_and_no_apps() -> None:
    parsed = parse_rules("", source=SOURCE)

    assert (parsed.rules, parsed.apps) == ([], {})


def test_unreadable_rules_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "paastis.yml"
    path.write_bytes(b"rules: \xff\xfe\n")

    with pytest.raises(ConfigError, match=r"paastis\.yml: the rules file is not UTF-8"):
        load_rules_file(path)


def test_rules_file_is_read_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "paastis.yml"
    path.write_text("rules:\n  - pattern: a\n    app_max_idle_time: 3\n")

    assert load_rules_file(path).rules[0].app_max_idle_time == 3


# The `apps:` section (local provider) ------------------------------------------------------


@pytest.mark.parametrize(
    ("app", "key"),
    [
        ("{command: 'sleep 9'}", "upstream"),
        ("{upstream: 'http://127.0.0.1:1', command: 'a', start: 'b', stop: 'c'}", "start"),
        ("{upstream: 'http://127.0.0.1:1', command: 'a', colour: 'red'}", "colour"),
        ("{upstream: 'http://127.0.0.1:1', start: 'b'}", "stop"),
        ("{upstream: 'http://127.0.0.1:1'}", "start"),
        ("{upstream: '127.0.0.1:1', command: 'a'}", "upstream"),
        ("{upstream: 'http://127.0.0.1:1', command: ''}", "command"),
        ("{upstream: 'http://127.0.0.1:1', command: 42}", "command"),
    ],
    ids=[
        "missing-upstream",
        "command-and-start",
        "unknown-key",
        "start-without-stop",
        "neither-command-nor-start",
        "upstream-not-a-url",
        "empty-command",
        "command-not-a-string",
    ],
)
def test_bad_local_app_names_the_file_the_app_and_the_key(app: str, key: str) -> None:
    message = error_of(f"apps:\n  hello: {app}\n")

    assert "app 'hello'" in message
    assert repr(key) in message


def test_local_app_that_is_not_a_mapping_is_an_error() -> None:
    assert "app 'hello'" in error_of("apps:\n  hello:\n")


def test_local_apps_are_parsed() -> None:
    parsed = parse_rules(
        "apps:\n"
        "  hello: {upstream: 'http://127.0.0.1:8001', command: 'python -m http.server 8001'}\n"
        "  db: {upstream: 'http://127.0.0.1:8002', start: 'a', stop: 'b', status: 'c'}\n",
        source=SOURCE,
    )

    assert parsed.apps["hello"].command == "python -m http.server 8001"
    assert (parsed.apps["db"].start, parsed.apps["db"].stop, parsed.apps["db"].status) == (
        "a",
        "b",
        "c",
    )


# Semantics ---------------------------------------------------------------------------------


def test_app_without_matching_rule_routes_to_itself_with_the_defaults() -> None:
    route = rules_of("rules:\n  - pattern: '^other$'\n    app_max_idle_time: 1\n", 15).resolve(
        "hello"
    )

    assert (route.app_name, route.max_idle_time, route.linked_apps) == ("hello", 15, ())
    assert (route.upstream, route.readiness_path) == (None, None)


def test_pattern_is_searched_not_anchored() -> None:
    rules = rules_of("rules:\n  - pattern: 'review'\n    app_max_idle_time: 2\n")

    assert rules.resolve("app-review-pr12").max_idle_time == 2


def test_group_references_are_interpolated() -> None:
    rules = rules_of(
        "rules:\n"
        "  - pattern: 'app-review-pr(\\d+)-(back|front)'\n"
        "    app_name: 'app-review-pr$1-$2'\n"
        "    linked_apps: ['app-review-pr$1-back']\n"
        "    upstream: 'https://pr$1-$2.example.net'\n"
    )

    route = rules.resolve("app-review-pr12-front")

    assert route.app_name == "app-review-pr12-front"
    assert route.linked_apps == ("app-review-pr12-back",)
    assert route.upstream == "https://pr12-front.example.net"


def test_dollar_ten_is_the_tenth_group_when_the_pattern_has_ten() -> None:
    groups = "".join(f"({letter})" for letter in "abcdefghij")
    rules = rules_of(f"rules:\n  - pattern: '{groups}'\n    app_name: 'x-$10-$1'\n")

    assert rules.resolve("abcdefghij").app_name == "x-j-a"


def test_dollar_ten_is_the_first_group_then_zero_when_the_pattern_has_fewer() -> None:
    rules = rules_of("rules:\n  - pattern: 'pr(\\d+)'\n    app_name: 'app-$10'\n")

    assert rules.resolve("pr7").app_name == "app-70"


def test_group_that_did_not_take_part_interpolates_as_empty() -> None:
    rules = rules_of("rules:\n  - pattern: 'app(-pr\\d+)?$'\n    app_name: 'back$1'\n")

    assert rules.resolve("app").app_name == "back"
    assert rules.resolve("app-pr3").app_name == "back-pr3"


def test_dollar_zero_is_the_whole_match() -> None:
    rules = rules_of("rules:\n  - pattern: 'pr\\d+'\n    app_name: 'app-$0'\n")

    assert rules.resolve("www-pr5").app_name == "app-pr5"


def test_every_matching_rule_applies_and_a_later_one_overrides_only_what_it_sets() -> None:
    rules = rules_of(
        "rules:\n"
        "  - pattern: 'app'\n"
        "    app_max_idle_time: 30\n"
        "    linked_apps: ['db']\n"
        "    upstream: 'https://first.example.net'\n"
        "    readiness_path: '/ready'\n"
        "  - pattern: 'nomatch'\n"
        "    app_max_idle_time: 99\n"
        "  - pattern: 'app-(\\w+)'\n"
        "    app_max_idle_time: 45\n"
        "    app_name: 'prod-$1'\n"
    )

    route = rules.resolve("app-blog")

    assert route.app_name == "prod-blog"
    assert route.max_idle_time == 45
    assert route.linked_apps == ("db",)
    assert route.upstream == "https://first.example.net"
    assert route.readiness_path == "/ready"


def test_later_rule_overrides_upstream_and_readiness_path() -> None:
    rules = rules_of(
        "rules:\n"
        "  - pattern: 'app'\n"
        "    upstream: 'https://first.example.net'\n"
        "    readiness_path: '/ready'\n"
        "  - pattern: 'app'\n"
        "    upstream: 'https://second.example.net/prefix'\n"
        "    readiness_path: ''\n"
    )

    route = rules.resolve("app")

    assert route.upstream == "https://second.example.net/prefix"
    assert route.readiness_path == ""


def test_zero_max_idle_time_is_kept() -> None:
    assert (
        rules_of("rules:\n  - pattern: a\n    app_max_idle_time: 0\n").resolve("a").max_idle_time
        == 0
    )


def test_decimal_max_idle_time_is_kept() -> None:
    route = rules_of("rules:\n  - pattern: a\n    app_max_idle_time: 0.1\n").resolve("a")

    assert route.max_idle_time == pytest.approx(0.1)


def test_linked_apps_are_deduplicated_and_exclude_the_app_itself() -> None:
    rules = rules_of("rules:\n  - pattern: 'a'\n    linked_apps: ['b', 'a', 'b', 'c']\n")

    assert rules.resolve("a").linked_apps == ("b", "c")


def test_linked_closure_follows_links_transitively() -> None:
    rules = rules_of(
        "rules:\n"
        "  - pattern: '^front$'\n    linked_apps: ['back']\n"
        "  - pattern: '^back$'\n    linked_apps: ['db']\n"
    )

    assert rules.linked_closure("front") == ("back", "db")


def test_linked_closure_of_a_cycle_terminates() -> None:
    rules = rules_of(
        "rules:\n"
        "  - pattern: '^a$'\n    linked_apps: ['b']\n"
        "  - pattern: '^b$'\n    linked_apps: ['a', 'c']\n"
        "  - pattern: '^c$'\n    linked_apps: ['a', 'b']\n"
    )

    assert rules.linked_closure("a") == ("b", "c")


def test_linked_apps_are_taken_literally_after_substitution() -> None:
    rules = rules_of(
        "rules:\n"
        "  - pattern: 'pr(\\d+)-front'\n    linked_apps: ['pr$1-back']\n"
        "  - pattern: 'back'\n    app_name: 'renamed'\n"
    )

    assert rules.linked_closure("pr4-front") == ("pr4-back",)


# What applies to the target app (DESIGN §4) --------------------------------------------------

REVIEW_RULE = (
    "rules:\n"
    "  - pattern: 'app-review-pr(\\d+)-(back|front)'\n"
    "    app_name: 'renamed-app-pr$1-$2'\n"
    "    app_max_idle_time: 30\n"
    "    linked_apps: ['app-review-pr$1-front']\n"
)


def test_every_field_the_key_rules_set_applies_to_the_renamed_target() -> None:
    route = rules_of(REVIEW_RULE).resolve("app-review-pr123-back")

    assert route.app_name == "renamed-app-pr123-back"
    assert route.max_idle_time == 30
    assert route.linked_apps == ("app-review-pr123-front",)


def test_the_target_rules_fill_in_only_the_fields_the_key_rules_leave_unset() -> None:
    rules = rules_of(
        REVIEW_RULE + "  - pattern: '^renamed-app-pr(\\d+)'\n"
        "    app_max_idle_time: 99\n"
        "    readiness_path: '/health'\n"
        "    upstream: 'https://pr$1.example.net'\n"
        "    app_name: 'never-used'\n"
    )

    route = rules.resolve("app-review-pr123-back")

    assert route.app_name == "renamed-app-pr123-back"
    assert route.max_idle_time == 30
    assert (route.readiness_path, route.upstream) == ("/health", "https://pr123.example.net")


def test_an_app_found_by_discovery_gets_the_rules_matching_its_provider_name() -> None:
    rules = rules_of(REVIEW_RULE, default_max_idle_time=15)

    route = rules.for_app("renamed-app-pr123-back")

    assert (route.app_name, route.max_idle_time, route.linked_apps) == (
        "renamed-app-pr123-back",
        15,
        (),
    )


def test_a_rule_matching_a_provider_name_never_renames_the_app_found() -> None:
    rules = rules_of("rules:\n  - pattern: 'blog'\n    app_name: other\n    app_max_idle_time: 5\n")

    route = rules.for_app("blog")

    assert (route.app_name, route.max_idle_time) == ("blog", 5)


def test_linked_closure_starts_from_the_linked_apps_given() -> None:
    rules = rules_of("rules:\n  - pattern: '^b$'\n    linked_apps: ['c']\n")

    assert rules.linked_closure("a", ("b",)) == ("b", "c")


def test_keep_awake_is_read_as_a_five_field_cron_expression() -> None:
    rules = rules_of("rules:\n  - pattern: 'a'\n    keep_awake: ' * 8-18 * * 1-5 '\n")

    assert rules.for_app("a").keep_awake == "* 8-18 * * 1-5"
    assert rules.for_app("b").keep_awake is None


@pytest.mark.parametrize("expression", ["* 25 * * *", "* * * * * *", "office hours", "* * *"])
def test_an_invalid_keep_awake_names_the_rule_and_the_key(expression: str) -> None:
    message = error_of(
        f"rules:\n  - pattern: 'a'\n  - pattern: 'b'\n    keep_awake: '{expression}'\n"
    )

    assert "rule 2, key 'keep_awake'" in message
    assert repr(expression) in message


def test_a_bad_pattern_is_shown_as_written_without_doubled_backslashes() -> None:
    message = error_of("rules:\n  - pattern: 'app-(\\d+'\n")

    assert "invalid regular expression 'app-(\\d+'" in message
