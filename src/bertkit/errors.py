"""The one exception type that the CLI turns into a one-line message instead of a traceback."""


class BertkitError(Exception):
    """A user-facing error: bad input, a missing file, a checkpoint that does not fit.

    The message says what was wrong, where, and (when it is not obvious) what to do.
    """


class NonFiniteOutputError(BertkitError):
    """The model computed NaN or infinite values: the fault lies with the model's weights, not with the input,
    so a server answers it with 500 rather than 400."""
