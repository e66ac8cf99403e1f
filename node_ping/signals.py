"""What signals do to the long-running commands (run, once, discover): a stop request they poll, and
a deadline for it.

| signal                           | effect                                                          |
| -------------------------------- | --------------------------------------------------------------- |
| SIGTERM, SIGINT, SIGHUP, SIGQUIT | logged; stop: the loop ends at its next check and fping is       |
| and every other signal whose     | killed. Not ended within the grace: fping killed, exit at once   |
| default ends the process (ALRM,  |                                                                  |
| VTALRM, PROF, XCPU, PWR, IO,     |                                                                  |
| STKFLT, the real-time signals)   |                                                                  |
| the same again while stopping    | logged; fping killed, exit at once                               |
| SIGUSR1, SIGUSR2                 | logged; nothing else (they ask nothing of node-ping)             |

A stuck main thread must not keep a stop from being noticed: one blocked in a system call (an open
FIFO, a hung NFS mount) may never come back to run a Python signal handler. So these signals are
blocked in every thread and taken by one thread of their own with sigwaitinfo(); handlers remain
only for a thread started before, which does not block them.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)

# Every other signal whose default action ends the process is a stop too: it would otherwise kill
# node-ping with nothing logged and nothing cleaned up.
_ALSO_STOPPING = ("SIGALRM", "SIGVTALRM", "SIGPROF", "SIGXCPU", "SIGPWR", "SIGIO", "SIGSTKFLT")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                *(getattr(signal, name) for name in _ALSO_STOPPING if hasattr(signal, name)),
                *(number for number in range(signal.SIGRTMIN, signal.SIGRTMAX + 1) if number in signal.valid_signals()))
NOTED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
HANDLED = frozenset({*STOP_SIGNALS, *NOTED_SIGNALS})


def _name(number: int) -> str:
    """SIGTERM, or SIGRTMIN+3 for a real-time signal (which has no name of its own)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIGRTMIN+{number - signal.SIGRTMIN}"


GRACE_S = 10.0
"""How long a stop may take before the process ends regardless (Kubernetes waits 30 s by default)."""

LOG_WAIT_S = 0.2
"""How long the last log line may take: stderr may be a pipe nobody reads, which must not stop the exit."""


def stop_on_signals(grace_s: float = GRACE_S, exit_code: int = 0,
                    on_overdue: Callable[[], None] = lambda: None) -> threading.Event:
    """An Event set by a stop signal (see the table above). Call from the main thread, first thing.

    When the stop takes longer than `grace_s`, or a second stop signal comes, `on_overdue` runs (it
    must not block: kill the children) and the process exits with `exit_code`."""
    stop = threading.Event()
    watchdog = _Watchdog(grace_s, exit_code, on_overdue)
    # Blocked before the thread starts: it inherits the mask, as does every thread started later.
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    watcher = threading.Thread(target=_watch, args=(stop, watchdog), name="signals", daemon=True)
    watcher.start()
    ident = watcher.ident
    assert ident is not None  # noqa: S101  (set by start())

    def forward(signum: int, _frame: FrameType | None) -> None:
        signal.pthread_kill(ident, signum)

    for signum in HANDLED:
        signal.signal(signum, forward)
    return stop


def _watch(stop: threading.Event, watchdog: _Watchdog) -> None:
    while True:
        info = signal.sigwaitinfo(HANDLED)
        name = _name(info.si_signo)
        sender = f" from pid {info.si_pid}" if info.si_pid and info.si_pid != os.getpid() else ""
        if info.si_signo in NOTED_SIGNALS:
            log.info("received %s%s; it asks nothing of node-ping, carrying on", name, sender)
        elif stop.is_set():
            watchdog.now(f"received {name}{sender} again while stopping")
        else:
            stop.set()
            watchdog.arm(name)  # before logging, which may block (see LOG_WAIT_S)
            log.info("received %s%s, stopping", name, sender)


class _Watchdog:
    """Ends the process when a stop is overdue."""

    def __init__(self, grace_s: float, exit_code: int, on_overdue: Callable[[], None]) -> None:
        self._grace_s = grace_s
        self._exit_code = exit_code
        self._on_overdue = on_overdue
        self._now = threading.Event()
        self._why = ""

    def arm(self, signal_name: str) -> None:
        threading.Thread(target=self._wait, args=(signal_name,), name="stop deadline", daemon=True).start()

    def now(self, why: str) -> None:
        self._why = why
        self._now.set()

    def _wait(self, signal_name: str) -> None:
        if not self._now.wait(self._grace_s):
            self._why = f"still running {self._grace_s:g} s after {signal_name}"
        self._on_overdue()
        logger = threading.Thread(target=log.error, daemon=True, args=(
            "%s: ending now; the main thread is in %s", self._why, _main_thread_at()))
        logger.start()
        logger.join(LOG_WAIT_S)
        os._exit(self._exit_code)


def _main_thread_at() -> str:
    """Where the main thread is: the innermost Python function, for the log line that says what hung."""
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    if frame is None:
        return "no Python code"
    code = frame.f_code
    return f"{code.co_name}() at {code.co_filename}:{frame.f_lineno}"
