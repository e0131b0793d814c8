"""Run an exported model (``rnn-lightning export``) with torch and tokenizers only.

from rnn_lightning.serving import ExportedPredictor
ExportedPredictor("exported/")(["A wonderful film."])   # -> [{"label": "pos", "prob": 0.93, "probs": {...}}]
"""

import io
import json
import pickle
import re
import zipfile
from collections import Counter
from pathlib import Path

import torch
from tokenizers import Tokenizer

from rnn_lightning.errors import InputError, said
from rnn_lightning.network import cpu_rnn  # noqa: F401  (registers the rnn cell's op, which an exported graph may hold)
from rnn_lightning.tasks import Task, task_from_state
from rnn_lightning.text.tokenizer import encode

# torch.export.load (torch 2.13) runs code from the file it reads: it unpickles pickled weights, constants and
# opaque objects (torch.load(weights_only=False), pickle.loads), retries the sample inputs without
# weights_only, evaluates shape expressions with sympy.sympify (Python's eval) and lets a graph node call any
# callable reachable as torch.<attribute>. So ``check_archive`` first admits only what ``Predictor.export``
# writes: tensors stored raw, sample inputs readable with weights_only=True, registered operators, and shape
# expressions of sympy's arithmetic on integers and size symbols. No public torch API reads an archive without
# running it, so the check knows the inner layout torch.export.save writes (torch 2.13); a change of layout
# refuses the project's own exports, which tests/e2e/test_trust.py exports and loads.
ARCHIVE_FILES = re.compile(
    r"[^/]+/(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|models/model\.json"
    r"|data/weights/model_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+|data/sample_inputs/model\.pt)"
)
RAW_TENSOR = re.compile(r"(weight|tensor)_\d+")  # a payload stored as bytes, not pickled
OPERATOR = re.compile(r"torch\.ops\.(aten|rnn_lightning)\.(\w+)\.(\w+)")  # and registered (_is_operator)
SHAPE_EXPRESSION = re.compile(r"[\w(),'= *+-]*")  # no '.', '[' or quotes other than a symbol's: no attribute access
SHAPE_NAMES = {"Symbol", "Integer", "Add", "Mul", "Min", "Max", "Pow", "Mod", "FloorDiv", "CeilDiv", "PythonMod"}
SHAPE_NAMES |= {"positive", "integer", "True", "False"}
SIZE_SYMBOL = re.compile(r"[a-z]\d+")  # s0, s52, u3: torch's size symbols


def predictions(
    texts: list[str], tokenizer: Tokenizer, probabilities, task: Task, batch_size: int = 1024
) -> list[dict]:
    """One ``task.decision`` per text (for a single-label task: the predicted class ``label``, its probability
    ``prob`` and every class's ``probs`` by name), from ``probabilities`` (ids (B, T) -> (B, K)). An empty or
    whitespace-only text gets ``None`` for each of the decision's fields."""
    out: list[dict] = [task.no_decision() for _ in texts]
    keep = [i for i, t in enumerate(texts) if t.strip()]
    for start in range(0, len(keep), batch_size):
        rows = keep[start : start + batch_size]
        ids = torch.from_numpy(encode(tokenizer, [texts[i] for i in rows])).long()
        for i, p in zip(rows, probabilities(ids).tolist(), strict=True):
            out[i] = task.decision(p)
    return out


class ExportedPredictor:
    """An exported folder: ``model.pt2`` (ids (B, T) -> probabilities (B, K)), ``tokenizer.json``, ``meta.json``."""

    def __init__(self, folder: str) -> None:
        folder = Path(folder)
        model, tokenizer, meta = folder / "model.pt2", folder / "tokenizer.json", folder / "meta.json"
        for path in (model, tokenizer, meta):
            if not path.is_file():
                raise InputError(f"{path}: missing; an export folder holds model.pt2, tokenizer.json and meta.json")
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer))
        except Exception as e:  # tokenizers raises a bare Exception for JSON it cannot read
            raise InputError(f"{tokenizer}: not a tokenizers JSON ({said(e)})") from None
        try:
            facts = json.loads(meta.read_text(encoding="utf-8"))
            names, task_state = facts["class_names"], facts.get("task")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise InputError(f"{meta}: expected JSON with class_names ({type(e).__name__}: {e})") from None
        if not (
            isinstance(names, list) and all(isinstance(n, str) for n in names) and len(set(names)) == len(names) > 1
        ):
            raise InputError(f"{meta}: class_names is {str(names)[:100]}; expected two or more distinct strings")
        if task_state is not None and not isinstance(task_state, dict):
            raise InputError(
                f'{meta}: task is {str(task_state)[:100]}; expected an object such as {{"multi_label": true}}'
            )
        self.class_names, self.task = names, task_from_state(names, task_state, f"{meta}: task.thresholds")
        check_archive(model)
        try:
            self.module = torch.export.load(model).module()
            probe = self.module(torch.from_numpy(encode(self.tokenizer, ["probe"])).long())  # (1, K)
        except Exception as e:  # what passed check_archive can still be an inconsistent graph
            raise InputError(
                f"{model}: torch.export could not load or run it ({type(e).__name__}: {str(e)[:160]})"
            ) from None
        if tuple(probe.shape) != (1, len(names)):
            raise InputError(
                f"{model}: gives {tuple(probe.shape)[1:]} probabilities per text; {meta} names {len(names)}"
            )

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> list[dict]:
        """See ``predictions``."""
        return predictions(texts, self.tokenizer, self.module, self.task)


def check_archive(path: Path) -> None:
    """Refuse a ``model.pt2`` that holds anything ``Predictor.export`` does not write (see ``ARCHIVE_FILES``),
    before ``torch.export.load`` reads it."""

    def refuse(what: str) -> InputError:
        return InputError(f"{path}: {what}; not an rnn-lightning export (only exports it writes are loaded)")

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            twice = [n for n, count in Counter(names).items() if count > 1]
            if twice:  # zipfile reads the last of two same-named entries, torch.export.load the first
                raise refuse(f"holds two entries named {twice[0]!r}")
            other = [n for n in names if not ARCHIVE_FILES.fullmatch(n)]
            if other or len({n.split("/", 1)[0] for n in names}) != 1:
                raise refuse(f"holds {(other or names)[0]!r}")
            root = names[0].split("/", 1)[0]
            for config in ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json"):
                if f"{root}/{config}" in names:
                    for entry in json.loads(archive.read(f"{root}/{config}"))["config"].values():
                        if entry["use_pickle"] or not RAW_TENSOR.fullmatch(entry["path_name"]):
                            raise refuse(f"holds a pickled or opaque payload ({entry['path_name']!r})")
            sample = f"{root}/data/sample_inputs/model.pt"
            try:  # torch.export.load would retry it with weights_only=False
                torch.load(io.BytesIO(archive.read(sample)), weights_only=True)
            except pickle.UnpicklingError:
                raise refuse("its sample inputs hold pickled Python objects") from None
            program = json.loads(archive.read(f"{root}/models/model.json"))
    except InputError:
        raise
    except Exception as e:  # not a zip, missing members, JSON of another shape, a refused pickle
        raise refuse(f"unreadable ({type(e).__name__}: {said(e, 120)})") from None
    for key, value in _strings(program):
        if key == "target" and not _is_operator(value):
            raise refuse(f"its graph calls {value[:80]!r}, not a registered operator")
        if key == "expr_str" and not _is_shape_expression(value):
            raise refuse(f"its graph holds the shape expression {value[:80]!r}")


def _strings(tree, key: str = ""):
    """(key, string) for every string in a JSON tree, with the key of the dict that holds it."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _strings(v, k)
    elif isinstance(tree, list):
        for v in tree:
            yield from _strings(v, key)
    elif isinstance(tree, str):
        yield key, tree


def _is_operator(target: str) -> bool:
    """``torch.ops.<aten|rnn_lightning>.<op>.<overload>`` naming a registered operator overload."""
    match = OPERATOR.fullmatch(target)
    if match is None:
        return False
    namespace, op, overload = match.groups()
    try:
        return overload in getattr(getattr(torch.ops, namespace), op).overloads()
    except (AttributeError, RuntimeError):  # no such operator
        return False


def _is_shape_expression(text: str) -> bool:
    """sympy's arithmetic on integers and size symbols, as torch.export writes them: nothing sympify could
    evaluate into another call."""
    names = re.findall(r"[A-Za-z_]\w*", text)
    return SHAPE_EXPRESSION.fullmatch(text) is not None and all(
        n in SHAPE_NAMES or SIZE_SYMBOL.fullmatch(n) for n in names
    )
