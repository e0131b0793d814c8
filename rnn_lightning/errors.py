"""The one exception type for bad input from a person (config values, data files, checkpoints)."""

import re

# The most characters of an error line. Messages quote what a person gave (a config value, a checkpoint's
# class names), which can be megabytes within every other bound; a longer line keeps its start (the field)
# and its end (what was expected), and says how much of the middle it left out.
MAX_LINE_CHARS = 1000
LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


def bounded(text: str, limit: int = MAX_LINE_CHARS) -> str:
    """``text`` on one line (line breaks made spaces) of at most about ``limit`` characters."""
    text = LINE_BREAKS.sub(" ", text)
    if len(text) <= limit:
        return text
    head, tail = limit * 2 // 3, limit // 3
    return f"{text[:head]} … ({len(text) - head - tail:,} characters left out) … {text[-tail:]}"


class InputError(ValueError):
    """A value a user supplied is unusable. The message names the field and what was expected.

    ``cli.py`` prints it as a single line instead of a traceback; the message is ``bounded`` here, once,
    whatever it quotes.
    """

    def __init__(self, message: str = "", *args) -> None:
        super().__init__(bounded(message) if isinstance(message, str) else message, *args)


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
