"""User-facing errors: one line naming the bad value and what is allowed."""


class VistasError(Exception):
    """An error caused by user input (config, data, files); printed as one line by the CLI."""


class ConfigError(VistasError):
    """A bad configuration value or override."""


class DataError(VistasError):
    """A missing, unreadable or malformed dataset."""
