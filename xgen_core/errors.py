"""User-facing errors: the CLI prints these as one line (no traceback unless --debug)."""


class XgenError(Exception):
    """A problem the user can fix: bad config, bad input, a failed quality gate."""


class ConfigError(XgenError):
    """A config key or value that does not validate."""


class InputError(XgenError):
    """Input data that cannot be read or fails a configured limit."""
