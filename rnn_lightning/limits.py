"""Bounds on what an untrusted config, data set or checkpoint may make the program build.

Each is checked where the input enters (the YAML loader, ``checkpoint.load_checkpoint``, the label column),
before anything is expanded, walked or allocated by its size, so a file of a few KB can neither hang a
command nor fill its memory.
"""

from collections.abc import Callable
from typing import Any

from rnn_lightning.errors import InputError

# Values a config or a checkpoint's structure may hold, counting a shared (aliased) value once per place
# it is used: what a walk of it costs. Configs hold hundreds and checkpoints a few thousand (one per
# weight, optimizer slot and class name); an alias bomb or a self-nested list holds billions.
MAX_NODES = 1_000_000
# Classes of a classifier: per-class metrics and the K x K confusion matrix grow with K squared, and
# jsonargparse checks a list of class names in time that grows with its length squared.
MAX_CLASSES = 1_000
MAX_CLASS_NAME_CHARS = 200  # a name is a column header (prob_<name>) and a metric's name (val/f1_<name>)
# Tokens a checkpoint's tokenizer may pad every text to: each one costs a step of the network for every
# text. Far above any review (IMDB's longest has about 2,500 words).
MAX_TOKENS = 100_000


def count_nodes(value: Any, field: str, limit: int = MAX_NODES) -> int:
    """The values in ``value`` (dicts, lists, tuples and sets are walked; anything else is one value),
    each shared one counted every time it is reached; more than ``limit`` is refused in one line."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            raise InputError(
                f"{field}: holds more than {limit:,} values once its shared (aliased or nested) parts are "
                "expanded; refused unread"
            )
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
    return count


def check_class_names(names: list, field: str) -> None:
    """At most ``MAX_CLASSES`` names of at most ``MAX_CLASS_NAME_CHARS`` characters each."""
    if len(names) > MAX_CLASSES:
        raise InputError(f"{field}: {len(names):,} classes; at most {MAX_CLASSES:,} are supported")
    long = next((n for n in names if len(str(n)) > MAX_CLASS_NAME_CHARS), None)
    if long is not None:
        raise InputError(
            f"{field}: the class name {str(long)[:40]!r}... has {len(str(long)):,} characters; "
            f"at most {MAX_CLASS_NAME_CHARS} are supported"
        )


def limit_yaml() -> None:
    """Make jsonargparse's YAML loader (``--config`` files and values given on the command line) bounded."""
    import yaml
    from jsonargparse import get_loader, set_loader

    load = get_loader("yaml")
    if not getattr(load, "bounded", False):
        set_loader("yaml", bounded_yaml(load), exceptions=(yaml.YAMLError,))


def bounded_yaml(load: Callable[[str], Any]) -> Callable[[str], Any]:
    """``load`` (jsonargparse's YAML loader), refusing a document whose aliases expand to more than
    ``MAX_NODES`` values before it is constructed: composing keeps one node per anchor, so it is cheap."""
    import yaml

    def bounded_load(stream: str) -> Any:
        if isinstance(stream, str) and "&" in stream:  # aliases need an anchor
            root = yaml.compose(stream, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            _count_yaml_nodes(root, stream)
        return load(stream)

    bounded_load.bounded = True
    return bounded_load


def _count_yaml_nodes(root, stream: str) -> None:
    import yaml

    count, stack = 0, [root]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_NODES:
            start = " ".join(stream[:40].split())
            raise yaml.YAMLError(
                f"config: a YAML document ({start!r}...) expands to more than {MAX_NODES:,} values through its "
                "aliases (&anchor/*alias); refused unread"
            )
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(v for pair in node.value for v in pair)
