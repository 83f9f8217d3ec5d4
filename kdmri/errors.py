"""The one exception type for mistakes a user can make (bad file, key, value).

The CLI prints such an error as one line and exits with status 2; any other exception
is a bug in kdmri and keeps its traceback.
"""


class KdmriError(Exception):
    """A user-facing error: one sentence naming the file or key, expected vs found."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (its type's name when it has none): what a
    one-line :class:`KdmriError` quotes of the library error behind it."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
