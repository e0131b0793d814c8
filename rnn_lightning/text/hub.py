"""The Hugging Face hub: whether it can be reached, and offline mode when it cannot."""

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse


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
