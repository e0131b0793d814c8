"""The one exception type for bad input from a person (config values, data files, checkpoints)."""


class InputError(ValueError):
    """A value a user supplied is unusable. The message names the field and what was expected.

    ``cli.py`` prints it as a single line instead of a traceback.
    """


class NonFiniteLossError(RuntimeError):
    """Training met a NaN/inf loss or gradient and ``model.on_nonfinite`` is ``stop``."""
