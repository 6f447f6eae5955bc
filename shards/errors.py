"""The one exception type a user can cause: the CLI prints it as one line and exits 2."""


class ShardsError(Exception):
    """Bad input (files, columns, URLs, options): the message names what and where."""
