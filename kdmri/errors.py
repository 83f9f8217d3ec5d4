"""The one exception type for mistakes a user can make (bad file, key, value).

The CLI prints such an error as one line and exits with status 2; any other exception
is a bug in kdmri and keeps its traceback.
"""


class KdmriError(Exception):
    """A user-facing error: one sentence naming the file or key, expected vs found."""
