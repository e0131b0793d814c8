"""Which classes and functions a config may name: a config (a preset, a shared run's ``config.yaml``, the
command line) is input, and naming a class or function imports its module, which runs that module's code.

jsonargparse checks every dotted path a value gives (``class_path``, a ``Callable`` field such as
``lr_lambda``) against its import-path policy before importing it, and again against where the object is
defined once imported; here that policy is: deny everything but ``ALLOWED_IMPORTS``.
"""

import os
import re

from jsonargparse import set_parsing_settings

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
