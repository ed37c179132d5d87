"""The exception types whose messages are meant for the analyst (shown in the message bar, no traceback)."""


class CaptionRunError(Exception):
    """A problem with the inputs, the output or the backend: the message says what was wrong and what to do."""


class BackendUnavailable(CaptionRunError):
    """A backend did not answer (no connection, a timeout, or 502/503/504 after the retries): the same request may
    succeed at another backend or later, unlike one a backend refused."""


class NotABackend(CaptionRunError):
    """Something answered at the URL, but not as a CCExpert backend (a 404 on ``/v1/info``, an answer that is not
    JSON, JSON without the API version): another server, or the backend's web UI rather than its API."""


class TokenNeeded(CaptionRunError):
    """The backend wants a token and none was sent (401): a stored one may be read now, and only now."""
