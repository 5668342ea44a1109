"""Errors that stop paastis before it serves anything."""


class ConfigError(Exception):
    """A bad configuration value: one line naming the variable or file, the value and what is
    accepted. The command line prints it and exits with code 2."""
