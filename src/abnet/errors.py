"""User-facing errors: bad usage or bad input, reported by the CLI in one line with exit code 2."""


class AbnetError(ValueError):
    """Bad input or usage; the message names the problem and the fix."""


class CheckpointError(AbnetError):
    """A checkpoint that is missing, unreadable, not abnet's, or of another model."""


class DataError(AbnetError):
    """A data set that is unknown, missing or malformed."""
