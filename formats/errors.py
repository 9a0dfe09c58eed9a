"""One exception type for every user-facing input problem.

The CLIs catch `InputError` and print its message as a single line (no traceback), so the
message itself must name the file, row or flag that is wrong.
"""


class InputError(ValueError):
    """Bad user input: a file, a row, a flag. The message is shown to the user verbatim."""
