"""Exceptions that separate the user's mistakes from the program's.

`BenchInputError` is bad input (sweep file, model name, dataset, flag): the CLI prints
its message as one line on stderr and exits 2. Anything else is a bug or a trial
failure and is handled (and retried) as such.
"""


class BenchInputError(Exception):
    """Bad input from the user; the message must name the file/field and what is expected."""


class DataUnavailable(BenchInputError):
    """A dataset is not on disk and may not be downloaded; the message names the expected path."""


def suggestion(name: object, known: list[str]) -> str:
    """'; did you mean 'x'?' for a near miss, else ' (known: a, b, c)': the tail of an unknown-name error."""
    import difflib

    hint = difflib.get_close_matches(str(name), known, n=1)
    return f"; did you mean '{hint[0]}'?" if hint else f" (known: {', '.join(known)})"
