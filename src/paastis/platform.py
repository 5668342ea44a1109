"""Which PaaS paastis itself runs on, and as which app, told by the variables each sets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Platform:
    name: str  # as PROVIDER_NAME names it
    label: str  # for people
    own_apps: tuple[str, ...]  # how paastis' own app may be named there (name, id)
    hint: str  # what to do when `own_apps` is empty


def detect_platform(environ: Mapping[str, str]) -> Platform | None:
    """The platform whose runtime variables are set, or None (a laptop, a container...)."""

    def value(name: str) -> str | None:
        found = (environ.get(name) or "").strip()
        return found or None

    def present(*names: str) -> tuple[str, ...]:
        return tuple(found for name in names if (found := value(name)))

    if value("DYNO"):
        return Platform(
            "heroku",
            "Heroku",
            present("HEROKU_APP_NAME"),
            "HEROKU_APP_NAME is set only with dyno metadata: heroku labs:enable "
            "runtime-dyno-metadata",
        )
    if value("CONTAINER") and value("APP"):
        return Platform("scalingo", "Scalingo", present("APP"), "")
    on_clever = value("INSTANCE_ID") or any(name.startswith("CC_") for name in environ)
    if on_clever and (value("APP_ID") or value("CC_APP_NAME")):
        return Platform("clever-cloud", "Clever Cloud", present("CC_APP_NAME", "APP_ID"), "")
    return None
