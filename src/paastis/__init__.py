"""paastis: a reverse proxy that puts idle PaaS apps to sleep and wakes them on demand."""

__version__ = "0.1.0"
