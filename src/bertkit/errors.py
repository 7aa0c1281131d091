"""The one exception type that the CLI turns into a one-line message instead of a traceback."""


class BertkitError(Exception):
    """A user-facing error: bad input, a missing file, a checkpoint that does not fit.

    The message says what was wrong, where, and (when it is not obvious) what to do.
    """


class NonFiniteOutputError(BertkitError):
    """The model computed NaN or infinite values: the fault lies with the model's weights, not with the input,
    so a server answers it with 500 rather than 400."""


SHOWN_CHARACTERS = 80  # how much of a bad value an error message repeats


def shown(value: object, limit: int = SHOWN_CHARACTERS) -> str:
    """`repr(value)` for an error message, cut to about `limit` characters: a message names the bad value without
    repeating a megabyte of it."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value):,} characters" if isinstance(value, str) else f"{len(text):,} characters as written"
    return f"{text[:limit]}... ({size})"
