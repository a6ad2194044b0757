"""User-facing errors: one exception type whose message says what is wrong and how to fix it.

The CLI prints these without a traceback and exits non-zero; anything else is a bug.
"""


class DrafttrainError(Exception):
    """A problem with the user's input (file, field, value) that the message explains."""
