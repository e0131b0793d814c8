"""Which classes and functions a config may name: a config (a preset, a shared run's ``config.yaml``, the
command line) is input, and naming a class or function imports its module, which runs that module's code.

jsonargparse checks every dotted path a value gives (``class_path``, a ``Callable`` field such as
``lr_lambda``) against its import-path policy before importing it, and again against where the object is
defined once imported; here that policy is: deny everything but ``ALLOWED_IMPORTS``.
"""

import inspect
import os
import re

from jsonargparse import Namespace, set_parsing_settings

from rnn_lightning.errors import InputError

# The packages whose classes a config may name: optimizers and schedulers, Lightning's callbacks, loggers,
# strategies, plugins, profilers and accelerators (Lightning's CheckpointIO and cluster environments are
# defined in lightning.fabric.plugins), LightningCLI's ReduceLROnPlateau (it knows the metric to monitor),
# and this project's own.
ALLOWED_IMPORTS = (
    "torch.optim",
    "lightning.pytorch.callbacks",
    "lightning.pytorch.loggers",
    "lightning.pytorch.strategies",
    "lightning.pytorch.plugins",
    "lightning.pytorch.profilers",
    "lightning.pytorch.accelerators",
    "lightning.fabric.plugins",
    "lightning.pytorch.cli.ReduceLROnPlateau",
    "rnn_lightning",
)
# More packages, comma-separated, that the person running the command trusts (their own callbacks); set
# in the environment, never by a config.
EXTRA_IMPORTS_ENV = "RNN_LIGHTNING_TRUSTED_IMPORTS"

# What jsonargparse says when it refuses a path (jsonargparse 4.53's check_import_path). Kept: the parser's
# error() gets that text, and its ImportDenied class is not exported; tests/e2e/test_trust.py's refused-import
# tests assert the one line built from it, so they fail when the text changes.
_REFUSED = re.compile(r"Importing '([\w.]+)' is not allowed")
_KEY = re.compile(r'Parser key "([^"]+)"')


def allowed_imports() -> list[str]:
    """``ALLOWED_IMPORTS`` and the packages of ``$RNN_LIGHTNING_TRUSTED_IMPORTS``."""
    extra = [p.strip() for p in os.environ.get(EXTRA_IMPORTS_ENV, "").split(",") if p.strip()]
    return [*ALLOWED_IMPORTS, *extra]


def restrict_imports() -> None:
    """Let configs name only ``allowed_imports()`` (jsonargparse's public policy, process-wide)."""
    set_parsing_settings(import_path_denylist=["*"], import_path_allowlist=allowed_imports())


def refused_import_line(message: str) -> str | None:
    """The one line for a parser error that is a refused import (the key, the path, what is allowed), or None.

    jsonargparse nests the refusal in its report of every type it tried; the keys that lead to it are
    named before it (``lr_scheduler``, then ``lr_lambda``)."""
    refused = _REFUSED.search(message)
    if refused is None:
        return None
    keys = list(dict.fromkeys(_KEY.findall(message[: refused.start()])))
    return (
        f"error: {'.'.join(keys) or 'config'}: {refused.group(1)!r} is not allowed; a config may name classes and "
        f"functions of {', '.join(allowed_imports())} only (add your own package to ${EXTRA_IMPORTS_ENV})"
    )


# This project's own package: configs name its classes (callbacks, schedules), never its functions, which do
# work of their own when called (``rnn_lightning.command.main`` runs a command), whatever the field's type says.
OWN_PACKAGE = "rnn_lightning"


def function_packages() -> list[str]:
    """The packages a config may name functions of: ``allowed_imports()`` but this project's own."""
    return [p for p in allowed_imports() if p != OWN_PACKAGE and not p.startswith(f"{OWN_PACKAGE}.")]


def check_functions(value, key: str = "") -> None:
    """Refuse, naming the field, a function in a parsed config (a ``Callable`` field such as
    ``lr_scheduler.lr_lambda``, which jsonargparse resolves from a dotted path) that is not of ``function_packages()``."""
    if inspect.isroutine(value):
        name = f"{getattr(value, '__module__', None)}.{getattr(value, '__qualname__', value)}"
        if not any(name.startswith(f"{p}.") for p in function_packages()):
            raise InputError(
                f"{key or 'config'}: {name!r} is not allowed; a config may name functions of "
                f"{', '.join(function_packages())} only"
            )
        return
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, dict):
        for k, v in value.items():
            check_functions(v, key if k == "init_args" else f"{key}.{k}".lstrip("."))
    elif isinstance(value, (list, tuple)):
        for v in value:
            check_functions(v, key)
