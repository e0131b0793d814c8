"""Everything rnn-lightning knows about checkpoint files: what they hold, how they are read, found and written.

A checkpoint is Lightning's dictionary plus the data module's state (the tokenizer as JSON text), so
a checkpoint alone turns raw text into predictions. It holds tensors and plain types only, and is
always read with ``weights_only=True``: loading never runs code from the file.
"""

import pickle
import stat
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from urllib.request import url2pathname

import torch
from tokenizers import Tokenizer

from rnn_lightning.errors import InputError, said
from rnn_lightning.limits import MAX_TOKENS, check_class_names, count_nodes
from rnn_lightning.tasks import Task, task_from_state

# Lightning stores a data module's state under its class name (so this is TextDataModule.__qualname__).
DATAMODULE_KEY = "TextDataModule"
TOKENIZER_KEY = "tokenizer"  # the tokenizer's JSON inside DATAMODULE_KEY
HPARAMS_KEY = "hyper_parameters"
DATAMODULE_HPARAMS_KEY = "datamodule_hyper_parameters"  # Lightning's key for the data module's
WEIGHTS_KEY = "state_dict"
DROPOUT_RNG_KEY = "dropout_rng_state"
TASK_KEY = "task"  # tasks.Task.state: a multi-label model's thresholds
RUN_VERSION_KEY = "run_version"  # the TensorBoard run (version_N) that wrote it
OPTIMIZERS_KEY = "optimizer_states"
DEFAULT_CLASS_NAMES = ("neg", "pos")  # the classes of a model whose checkpoint names none: IMDB's
FORMAT_KEY, FORMAT = "rnn_lightning_format", 2  # bump with a step in ``upgrade`` when the layout changes

HPC_PATTERN = "hpc_ckpt_*.ckpt"  # Lightning's SLURM requeue checkpoints, in trainer.default_root_dir

LAST_NAME = "last"  # checkpoints/last.ckpt: the latest epoch, for resuming
BEST_PATTERN = "best-*.ckpt"  # checkpoints/best-epochNN-accX.XXXX.ckpt: the best by val/acc
NAMED = {"last": f"{LAST_NAME}.ckpt", "best": BEST_PATTERN}

Kind = Literal["classifier", "language model"]
LANGUAGE_MODEL_KEY = "cutoffs"  # a hyperparameter only a language model has: what tells the two kinds apart
EMBEDDING_KEY, HEAD_KEY = "net.embedding.weight", "net.head.weight"  # (vocab_size, E) and (outputs, pooled)


def kind(hyperparameters: Collection[str]) -> Kind:
    """What a checkpoint's hyperparameters (or a model class's arguments) describe."""
    return "language model" if LANGUAGE_MODEL_KEY in hyperparameters else "classifier"


def load_checkpoint(path: str | Path, mmap: bool = False, expect: Kind | None = None) -> dict[str, Any]:
    """Read ``path`` with ``weights_only=True`` and check it is an rnn-lightning checkpoint.

    Every way a file can be wrong (missing, not a regular file, truncated, another format, pickled
    objects, another program's dictionary, a tokenizer or class names that are not what this project
    writes or that do not fit its weights, NaN/inf weights, another ``kind`` than ``expect``) is an
    ``InputError`` naming the file. A checkpoint with NaN/inf weights is refused for every use: it predicts
    NaN, and a fit resumed from it has a NaN loss from its first step. ``mmap``: tensors are read from the
    file when used (a predictor then never reads the optimizer's state, two thirds of a trained checkpoint).
    """
    path = local_path(path)
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        raise InputError(f"ckpt_path: {str(path)!r} does not exist") from None
    if not stat.S_ISREG(mode):
        what = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise InputError(f"ckpt_path: {str(path)!r} is {what}, not a regular file; expected a checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():  # not a refused Python object: junk or another format
            raise InputError(f"ckpt_path: {str(path)!r} is not a readable checkpoint (another format)") from None
        raise InputError(
            f"ckpt_path: {str(path)!r} holds pickled Python objects, which weights_only loading refuses "
            "(rnn-lightning checkpoints hold only tensors and plain types; this one came from elsewhere)"
        ) from None
    except Exception as e:
        raise InputError(
            f"ckpt_path: {str(path)!r} is not a readable checkpoint (truncated or another format: {type(e).__name__})"
        ) from None
    count_nodes(ckpt, f"ckpt_path: {str(path)!r}")  # before anything walks it: shared parts expand when walked
    if isinstance(ckpt, dict):
        upgrade(ckpt)
    if not (
        isinstance(ckpt, dict)
        and {WEIGHTS_KEY, HPARAMS_KEY, DATAMODULE_KEY} <= ckpt.keys()
        and isinstance(ckpt[WEIGHTS_KEY], dict)
        and isinstance(ckpt[HPARAMS_KEY], dict)
        and isinstance(ckpt[DATAMODULE_KEY], dict)
        and isinstance(ckpt[DATAMODULE_KEY].get(TOKENIZER_KEY), str)
    ):
        raise InputError(
            f"ckpt_path: {str(path)!r} is not an rnn-lightning checkpoint (no weights, hyperparameters and tokenizer)"
        )
    try:
        tok = Tokenizer.from_str(tokenizer_json(ckpt))
    except Exception as e:  # tokenizers raises a bare Exception for JSON it cannot read
        raise InputError(
            f"ckpt_path: {str(path)!r} holds a tokenizer that tokenizers cannot read ({said(e)})"
        ) from None
    names = ckpt[HPARAMS_KEY].get("class_names")
    if names is not None and not (
        isinstance(names, (list, tuple))
        and all(isinstance(n, str) for n in names)
        and len(set(names)) == len(names) > 1
    ):
        raise InputError(
            f"ckpt_path: {str(path)!r} holds class_names {str(names)[:100]}; expected two or more distinct strings"
        )
    if names is not None:
        check_class_names(names, f"ckpt_path: {str(path)!r} class_names")
    data = ckpt.get(DATAMODULE_HPARAMS_KEY)
    lengths = {  # tokens per text: the tokenizer's own (Predictor) and the data module's (the CLI)
        "its tokenizer's truncation": (tok.truncation or {}).get("max_length"),
        "its tokenizer's padding": (tok.padding or {}).get("length"),
        "data.max_len": data.get("max_len") if isinstance(data, dict) else None,
    }
    for what, n in lengths.items():
        if n is not None and not (isinstance(n, int) and 1 <= n <= MAX_TOKENS):
            raise InputError(f"ckpt_path: {str(path)!r}: {what} is {n!r} tokens a text; expected 1..{MAX_TOKENS:,}")
    found = kind(ckpt[HPARAMS_KEY])
    if expect is not None and found != expect:
        use = {
            "classifier": "classify with a classifier checkpoint (a language model starts one through model.init_from)",
            "language model": "pretrain continues a language model checkpoint",
        }[expect]
        raise InputError(f"ckpt_path: {str(path)!r} is a {found} checkpoint; {use}")
    _check_weights(ckpt, tok, f"ckpt_path: {str(path)!r}")
    return ckpt


def task(ckpt: dict[str, Any], thresholds=None, where: str = "ckpt_path") -> Task:
    """The task of a classifier checkpoint read by ``load_checkpoint``: what its class names make of its
    outputs, single- or multi-label, with the thresholds it keeps (``thresholds`` override them)."""
    hparams = ckpt[HPARAMS_KEY]
    names = list(hparams.get("class_names") or DEFAULT_CLASS_NAMES)
    kept = ckpt.get(TASK_KEY) or {}
    if not isinstance(kept, dict):
        raise InputError(f"{where}: its {TASK_KEY!r} entry is a {type(kept).__name__}; expected a dict")
    state = {**kept, "multi_label": bool(hparams.get("multi_label"))}  # the kind the model was built as
    return task_from_state(names, state, f"{where}: task", thresholds)


def _check_weights(ckpt: dict[str, Any], tok: Tokenizer, where: str) -> None:
    """Refuse weights that hold NaN/inf, or that disagree with the checkpoint's own
    tokenizer (an id past the embedding's rows) or class names (another number of outputs)."""
    weights = ckpt[WEIGHTS_KEY]
    for name, tensor in weights.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(
                f"{where} holds non-finite weights ({name} has NaN or inf): it cannot predict or train further; "
                "use a checkpoint from before the weights diverged (e.g. an earlier best-*.ckpt)"
            )
    embedding, head = weights.get(EMBEDDING_KEY), weights.get(HEAD_KEY)
    rows = embedding.shape[0] if isinstance(embedding, torch.Tensor) and embedding.dim() == 2 else None
    ids = max(tok.get_vocab(with_added_tokens=True).values(), default=-1) + 1
    if rows is not None and ids > rows:
        raise InputError(
            f"{where}: its tokenizer has ids up to {ids - 1:,}, its embedding only {rows:,} rows; "
            "the tokenizer is not the one these weights were trained with"
        )
    vocab_size = ckpt[HPARAMS_KEY].get("vocab_size")
    if rows is not None and vocab_size is not None and vocab_size != rows:
        raise InputError(
            f"{where}: its hyper_parameters give vocab_size {vocab_size!r}, its embedding has {rows:,} rows"
        )
    if isinstance(head, torch.Tensor) and kind(ckpt[HPARAMS_KEY]) == "classifier":
        outputs = task(ckpt, where=where).num_outputs
        if head.dim() != 2 or head.shape[0] != outputs:
            names = ckpt[HPARAMS_KEY].get("class_names") or DEFAULT_CLASS_NAMES
            raise InputError(
                f"{where}: its {len(names)} class names need {outputs} output(s), its weights have "
                f"{head.shape[0] if head.dim() else 0}; the class names are not the ones these weights were trained with"
            )


# Settings that shape the network's weights: a resumed fit must keep the checkpoint's (section, key).
SHAPE_KEYS = tuple(("model", k) for k in ("embed_dim", "cell", "hidden_size", "num_layers", "bidirectional",
                                          "pooling", "bigram_buckets", "ngram_buckets", "ngram_nb")) + (
    ("data", "vocab_size"),
)  # fmt: skip


def shape_differences(ckpt: dict[str, Any], config) -> list[tuple[str, Any, Any]]:
    """The network-shaping settings (``SHAPE_KEYS``) where ``config`` differs from the checkpoint:
    (``section.key``, the checkpoint's value, the config's)."""
    saved = {"model": ckpt.get(HPARAMS_KEY) or {}, "data": ckpt.get(DATAMODULE_HPARAMS_KEY) or {}}
    out = []
    for section, key in SHAPE_KEYS:
        given, kept = config[section].get(key), saved[section].get(key)
        if key in saved[section] and given is not None and given != kept:
            out.append((f"{section}.{key}", kept, given))
    return out


def check_same_shape(ckpt: dict[str, Any], config) -> None:
    """Refuse, naming the first setting, a config whose network differs from the checkpoint's (``fit`` resumes)."""
    for name, kept, given in shape_differences(ckpt, config)[:1]:
        raise InputError(
            f"{name}: the checkpoint was trained with {kept!r}, the config gives {given!r}; "
            "resuming needs the checkpoint's (pass its run's config.yaml)"
        )


def local_path(path: str | Path) -> str:
    """A checkpoint given by a path or a ``file://`` URL, as a local path (``last``, ``best`` and ``hpc``
    pass through). A remote URL (``https://``, ``s3://`` ...) or Lightning's model registry is refused:
    Lightning would read it without these checks, and reads ``http(s)`` URLs with ``weights_only=False``
    unless told otherwise."""
    text = str(path)
    if text.lower() == "registry" or text.lower().startswith("registry:"):
        raise InputError(f"ckpt_path: {text!r}: Lightning's model registry is not supported; pass a checkpoint's path")
    if "://" not in text:
        return text
    url = urlsplit(text)
    if url.scheme.lower() == "file" and url.netloc in ("", "localhost"):
        return url2pathname(url.path)
    raise InputError(f"ckpt_path: {text!r} is a URL; download it and pass the local path")


def tokenizer_json(ckpt: dict[str, Any]) -> str:
    """The tokenizer (JSON text) of a checkpoint read by ``load_checkpoint``."""
    return ckpt[DATAMODULE_KEY][TOKENIZER_KEY]


def run_version(run_dir: Path) -> int | None:
    """``version_7`` -> 7; anything else -> None."""
    number = run_dir.name.removeprefix("version_")
    return int(number) if run_dir.name.startswith("version_") and number.isdigit() else None


def find_checkpoint(runs_dir: Path, which: Literal["last", "best"], run: Path | None = None) -> Path:
    """``last.ckpt`` or the best ``best-*.ckpt`` (``recorded_best``) of ``run`` (a ``version_N`` folder), or
    else of the newest run under ``runs_dir`` (``lightning_logs/``).

    Lightning's own ``"last"``/``"best"`` only know the checkpoints of the current process's ``fit``.
    """
    if run is not None:
        found = list((run / "checkpoints").glob(NAMED[which]))
        if not found:
            raise InputError(
                f"ckpt_path: {which!r} but the run {str(run)!r} (of --config) has no checkpoints/{NAMED[which]}"
            )
    else:
        found = [
            p for p in runs_dir.glob(f"version_*/checkpoints/{NAMED[which]}") if run_version(p.parents[1]) is not None
        ]
        if not found:
            raise InputError(
                f"ckpt_path: {which!r} but no run under {runs_dir} has checkpoints/{NAMED[which]}; pass a checkpoint's path"
            )
        newest = max(run_version(p.parents[1]) for p in found)
        found = [p for p in found if run_version(p.parents[1]) == newest]
    if which == "best" and len(found) > 1:  # save_top_k > 1: the newest file need not be the best
        return recorded_best(found)
    return max(found, key=lambda p: p.stat().st_mtime)


def recorded_best(found: list[Path]) -> Path:
    """Of one run's ``best-*`` checkpoints, the one its ``ModelCheckpoint`` recorded as best (``best_model_path``
    of the callback's state, scored by the monitored metric in the callback's own mode) in the checkpoint
    written last (the most global steps); the newest file when none records one of them."""
    latest, recorded = -1, None
    for path in found:
        try:  # tensors are read only when used: each file's callback state only, not its weights
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            continue  # load_checkpoint says what is wrong with it, if it is chosen
        states = ckpt.get("callbacks") if isinstance(ckpt, dict) else None
        step = ckpt.get("global_step") if isinstance(ckpt, dict) else None
        if not isinstance(states, dict) or not isinstance(step, int) or step <= latest:
            continue
        for state in states.values():
            best = state.get("best_model_path") if isinstance(state, dict) else None
            if isinstance(best, str) and path.parent / Path(best).name in found:
                latest, recorded = step, path.parent / Path(best).name
    return recorded or max(found, key=lambda p: p.stat().st_mtime)


def requeue_checkpoint(root_dir: str | Path) -> Path | None:
    """The newest of Lightning's SLURM requeue checkpoints (``hpc_ckpt_N.ckpt``) in ``root_dir``, if any."""
    numbered = {p.stem.rsplit("_", 1)[1]: p for p in Path(root_dir).glob(HPC_PATTERN)}
    found = [(int(n), p) for n, p in numbered.items() if n.isdigit()]
    return max(found)[1] if found else None


def run_of_config(config_paths) -> Path | None:
    """The run folder (``version_N``) whose saved ``config.yaml`` is among ``config_paths``, if one is (the last)."""
    runs = [Path(str(c)).resolve().parent for c in config_paths or [] if Path(str(c)).name == "config.yaml"]
    runs = [r for r in runs if run_version(r) is not None and (r / "checkpoints").is_dir()]
    return runs[-1] if runs else None


def run_of(ckpt_path: Path, runs_dir: Path) -> int | None:
    """The version number of the run a checkpoint belongs to, if it sits in ``runs_dir/version_N/checkpoints/``."""
    ckpt_path, runs_dir = ckpt_path.resolve(), runs_dir.resolve()
    if ckpt_path.parent.name != "checkpoints" or ckpt_path.parents[2] != runs_dir:
        return None
    return run_version(ckpt_path.parents[1])


def upgrade(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Bring a checkpoint written by an earlier version to ``FORMAT``, in place; returns it.

    Format 1 (no ``FORMAT_KEY``): the data module's state sat under its old class name
    ``IMDBDataModule``, and a language model's network carried a classification head it never used
    (``net.head.*``, with its slots in the optimizer's state).
    """
    if ckpt.get(FORMAT_KEY, 1) < 2:
        if "IMDBDataModule" in ckpt:
            ckpt[DATAMODULE_KEY] = ckpt.pop("IMDBDataModule")
        weights, hparams = ckpt.get(WEIGHTS_KEY), ckpt.get(HPARAMS_KEY) or {}
        if isinstance(weights, dict) and "cutoffs" in hparams:  # a language model
            names = list(weights)  # its parameters in registration order: the optimizer's numbering
            dead = [i for i, name in enumerate(names) if name.startswith("net.head.")]
            for name in [names[i] for i in dead]:
                del weights[name]
            for state in ckpt.get(OPTIMIZERS_KEY) or []:
                _drop_params(state, dead)
    ckpt[FORMAT_KEY] = FORMAT
    return ckpt


def _drop_params(optimizer_state: dict, dead: list[int]) -> None:
    """Remove parameters by index from a ``torch.optim`` state dict, renumbering the rest."""
    for group in optimizer_state["param_groups"]:
        group["params"] = [i for i in group["params"] if i not in dead]
    kept = [i for group in optimizer_state["param_groups"] for i in group["params"]]
    new_index = {old: new for new, old in enumerate(sorted(kept))}
    for group in optimizer_state["param_groups"]:
        group["params"] = [new_index[i] for i in group["params"]]
    optimizer_state["state"] = {new_index[i]: v for i, v in optimizer_state["state"].items() if i in new_index}
