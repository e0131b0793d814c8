"""The one exception type for bad input from a person (config values, data files, checkpoints)."""


class InputError(ValueError):
    """A value a user supplied is unusable. The message names the field and what was expected.

    ``cli.py`` prints it as a single line instead of a traceback.
    """


def unreadable_file(field: str, path, error: Exception) -> InputError:
    """The one line for a file that its reader (datasets, pyarrow, csv) could not read: the field, the
    file, its type by suffix, and the reader's own words, on one line."""
    message = f"{field}: could not read {str(path)!r} as {path.suffix[1:]} ({type(error).__name__}: {error})"
    return InputError(message.replace("\n", " ")[:400])


def said(error: BaseException, limit: int | None = 160) -> str:
    """What ``error`` says, on one line (its whitespace runs made single spaces), cut to ``limit`` characters."""
    return " ".join(str(error).split())[:limit]


class NonFiniteLossError(RuntimeError):
    """Training met a NaN/inf loss or gradient and ``model.on_nonfinite`` is ``stop``."""
