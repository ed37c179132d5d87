"""The exception types whose messages are meant for the analyst (shown in the message bar, no traceback)."""


class CaptionRunError(Exception):
    """A problem with the inputs, the output or the backend: the message says what was wrong and what to do."""


class BackendUnavailable(CaptionRunError):
    """A backend did not answer (no connection, a timeout, or 502/503/504 after the retries): the same request may
    succeed at another backend or later, unlike one a backend refused."""
