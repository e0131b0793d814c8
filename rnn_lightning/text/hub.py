"""The Hugging Face hub and its ``datasets`` library: whether the hub can be reached (offline mode when it
cannot), loading through ``datasets`` without its progress bars and logs, and what it raises as one line."""

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

from rnn_lightning.errors import InputError
from rnn_lightning.files import DISK_ERRORS
from rnn_lightning.text.locations import DEFAULT_DATASET


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub's host name resolves, within ``timeout`` seconds.

    Without it, ``datasets`` retries every request with back-off before failing; a machine without
    internet is known after one name lookup.
    """
    from huggingface_hub import constants

    host, answers = urlparse(constants.ENDPOINT).hostname, []

    def lookup() -> None:
        try:
            answers.append(socket.getaddrinfo(host, 443))
        except OSError:
            pass

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answers)


@contextmanager
def offline_if_unreachable() -> Iterator[None]:
    """Hub offline mode (a locally cached copy still loads) when the hub cannot be reached."""
    import datasets
    from huggingface_hub import constants

    if datasets.config.HF_HUB_OFFLINE or hub_reachable():
        yield
        return
    # The documented switch is the HF_HUB_OFFLINE variable, read at import; these are its values.
    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def load_hub(dataset: str, config_name: str | None):
    try:
        with offline_if_unreachable():
            return load_dataset(dataset, config_name)
    except Exception as e:  # the hub answers offline-ness with several exception types
        raise hub_error(dataset, e) from None


def hub_error(dataset: str, e: Exception) -> InputError:
    return InputError(
        f"data.dataset: could not load {dataset!r} from the Hugging Face hub ({type(e).__name__}); "
        "without internet, point --data.dataset at a local copy: a folder of train/test parquet files "
        f"(the {DEFAULT_DATASET} layout) or an unpacked aclImdb/ folder"
    )


def load_dataset(*args, **kwargs):
    import datasets

    with quiet_datasets():
        return datasets.load_dataset(*args, **kwargs)


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """No per-split progress bars from ``datasets`` for files it converts to Arrow (Lightning's are enough),
    and none of its error logs: a file it cannot read becomes our one line naming the file."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not was_disabled:
            datasets.enable_progress_bars()


@contextmanager
def unreadable_folder(dataset: str) -> Iterator[None]:
    """What ``datasets`` raises for a folder it cannot read, as one line; a full disk stays itself."""
    try:
        yield
    except OSError as e:
        if e.errno in DISK_ERRORS:
            raise full_cache(e, e.filename or "data.cache_dir") from None
        raise InputError(
            f"data.dataset: could not read {dataset!r} as a dataset folder ({e})".replace("\n", " ")
        ) from None
    except Exception as e:
        raise InputError(
            f"data.dataset: could not read {dataset!r} as a dataset folder ({e})".replace("\n", " ")
        ) from None


def full_cache(error: OSError, filename) -> InputError:
    """A full or failing disk under ``data.cache_dir`` while ``datasets`` copies the data there, as one line
    (the class names are read while the command line is parsed, where only an ``InputError`` is one line)."""
    return InputError(
        f"data.cache_dir: {error.strerror or error} writing {filename}; free space or set another data.cache_dir"
    )
