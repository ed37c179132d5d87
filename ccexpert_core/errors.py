"""The exception type that carries a message meant for a user (no traceback is shown for it)."""


class CCExpertError(Exception):
    """A problem with the user's input or environment: the message says what was wrong and what to do.

    The ``ccexpert`` command prints it as one line on stderr and exits with its :attr:`exit_code`.
    """

    #: The command's exit status for it: 2, bad input or an environment that stops the work.
    exit_code = 2


class FailedTilesError(CCExpertError):
    """A run that ended with tiles its engine failed: they are kept as ``failed``, and the same command run again
    captions them. Exit status 3, so that a script tells "run again later" from "fix the input"."""

    exit_code = 3
