class XgenError(Exception):
    """A user-facing error printed as one line by the CLI."""
