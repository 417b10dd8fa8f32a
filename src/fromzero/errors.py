"""One exception type for mistakes the user can fix.

The CLI prints a `FromzeroError` as a single line (no traceback) and exits non-zero; every other
exception is a bug and keeps its traceback.
"""


class FromzeroError(Exception):
    """A user-fixable problem: the message says what is wrong and how to fix it."""
