"""Stop signals: what SIGTERM (SLURM, Kubernetes, ``timeout``) and SIGINT (Ctrl+C) do in each phase of a
command. Every signal handler of the package is installed here:

- preparing the data (the tokenizer trained, the token cache written): ``stop_raises`` ends the command at
  once, removing the files it was writing; ``in_thread`` keeps a long call into Rust from holding a stop off;
- reading the texts to classify: ``stop_on_sigterm``, a stop also inside a read that waits on a pipe;
- DataLoader workers: ``leave_stop_signals_to_the_main_process``;
- fit and predict: ``SigintAsSigterm`` (Ctrl+C takes Lightning's SIGTERM path) and ``Deferred`` (SLURM's
  requeue at a batch boundary), used by the Lightning callback ``training.graceful_stop.GracefulStop``,
  which writes ``last.ckpt``;
- serving: ``exit_on_stop``, once uvicorn has finished the requests in flight.

Python runs signal handlers in the main thread only: in another thread each of these does nothing.
Lightning is not imported here, so that the server, which handles signals too, does not load it.
"""

import functools
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(SystemExit):
    """A stop signal ended the command outside Lightning's own stop path; the exit status is 128 + ``signum``.
    ``GracefulStop`` treats it as Lightning's ``SIGTERMException``: nothing is written."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class StoppedWhilePreparing(Stopped):
    """A stop signal while the data was prepared (the tokenizer trained, the token cache written), before
    Lightning's own handlers are in place: there is nothing to resume from; the unfinished files are removed."""


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def stop_raises(fn):
    """Decorator: while ``fn`` runs in the main thread, SIGTERM and SIGINT raise ``StoppedWhilePreparing``
    at once, so that the files it was writing beside their targets (``files.atomic_file``/``atomic_folder``)
    are removed on the way out. Without it SIGTERM kills the process where it stands, leaving them."""

    def raise_stop(signum, frame) -> None:
        raise StoppedWhilePreparing(signum)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not _in_main_thread():
            return fn(*args, **kwargs)
        previous = {signum: signal.signal(signum, raise_stop) for signum in STOP_SIGNALS}
        try:
            return fn(*args, **kwargs)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    return wrapper


def in_thread(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` run in a thread while the main thread waits for it: Python runs signal
    handlers in the main thread only, between its own steps, and a long call into Rust (the tokenizers'
    trainer) would hold them off until it returned. On a stop the call is left to end with the process."""
    if not _in_main_thread():
        return fn(*args, **kwargs)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the caller
            outcome["error"] = e

    worker = threading.Thread(target=run, name=getattr(fn, "__name__", "call"), daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)  # a signal's handler runs between these waits
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within it, SIGTERM stops at once, also inside a read that waits on a pipe, a FIFO or a stalled
    standard input (Python retries such a read after a handler that returns, so it would wait for the
    writer). The handler in place runs first (Lightning's notes the signal), then ``Stopped`` ends the
    command as a stop between predict batches does (``GracefulStop``: exit 143, no file)."""
    if not _in_main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def stop(signum, frame) -> None:
        if callable(previous):
            previous(signum, frame)
        raise Stopped(signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """A DataLoader worker's ``worker_init_fn``: SIGINT and SIGTERM sent to the whole process group (Ctrl+C,
    SLURM, ``kill -- -PGID``) are for the main process, which saves its checkpoint and then ends the workers.

    torch's own worker handler exits on a SIGTERM from the parent (how the parent ends a stuck worker) and
    dies of any other, which the main process then reports as a crashed worker instead of stopping. Here
    SIGINT is ignored and SIGTERM is blocked and waited for by a thread: from the parent it exits as
    torch's does, from anyone else it is dropped."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later inherit the mask
    parent = os.getppid()

    def wait_for_sigterm() -> None:
        while True:
            if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
                os._exit(0)

    threading.Thread(target=wait_for_sigterm, name="sigterm-from-parent", daemon=True).start()


class SigintAsSigterm:
    """While installed, Ctrl+C (SIGINT) is sent on to this process as SIGTERM, so that both take one path
    (Lightning's: every DDP process stops at the same step); ``received`` is then SIGINT. A second Ctrl+C
    raises ``KeyboardInterrupt``: it stops at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = None

    def install(self) -> None:
        self.received = None
        if _in_main_thread():
            self._previous = signal.signal(signal.SIGINT, self._forward)

    def uninstall(self) -> None:
        if self._previous is not None and _in_main_thread():
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _forward(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt  # the second Ctrl+C
        self.received = signal.SIGINT
        os.kill(os.getpid(), signal.SIGTERM)


class Deferred:
    """The handler in place for ``signum`` (one that another installed), run later, when the caller chooses
    (``run_pending``): on the signal a note is taken only. Without a callable handler in place, or outside
    the main thread, nothing is installed (``active`` is False)."""

    def __init__(self, signum: int) -> None:
        self.signum, self.pending = signum, False
        handler = signal.getsignal(signum) if _in_main_thread() else None
        self.handler = handler if callable(handler) else None
        if self.handler is not None:
            signal.signal(signum, self._note)

    @property
    def active(self) -> bool:
        return self.handler is not None

    def _note(self, signum, frame) -> None:
        self.pending = True

    def run_pending(self) -> None:
        if self.pending and self.handler is not None:
            self.pending = False
            self.handler(self.signum, None)


def exit_on_stop() -> None:
    """SIGTERM and SIGINT end the process with status 0. For a server whose own handlers (uvicorn's) finish
    the requests in flight and then raise the stop signal again: the stop is then a normal exit."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda *_: sys.exit(0))
