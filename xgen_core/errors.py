class XgenError(Exception):
    """A user-facing error: the CLI prints it as one line, without a stack trace."""
