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


def check_count(value: object, name: str) -> None:
    """Refuse a `name` (a batch size, a number of candidates) that is not a whole number of 1 or more: 0 failed
    inside `range`, a float inside a slice, both without naming the argument."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BertkitError(f"{name} must be a whole number of 1 or more, got {shown(value)}")
