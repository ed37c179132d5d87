"""The one exception type whose message is meant for the analyst (shown in the message bar, no traceback)."""


class CaptionRunError(Exception):
    """A problem with the inputs, the output or the backend: the message says what was wrong and what to do."""
