"""The one exception type that carries a message meant for a user (no traceback is shown for it)."""


class CCExpertError(Exception):
    """A problem with the user's input or environment: the message says what was wrong and what to do.

    The ``ccexpert`` command prints it as one line on stderr and exits with code 2.
    """
