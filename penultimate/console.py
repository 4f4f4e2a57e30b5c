"""What the terminal shows: TensorFlow's native start-up lines and Dask's INFO chatter off, one
line per failure with the details in a log file, unless verbose (`--verbose`, PENULTIMATE_VERBOSE).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.abc
import importlib.machinery
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

from tqdm import tqdm

VERBOSE_ENV = "PENULTIMATE_VERBOSE"
LOG_FILE_ENV = "PENULTIMATE_LOG_FILE"
DEFAULT_LOG_FILE = Path(".cache/logs/penultimate.log")
# Loggers that say, at INFO, what only someone debugging Dask or TensorFlow wants to read.
CHATTY_LOGGERS = (
    "distributed",
    "prefect.task_runner.dask",
    "tensorflow",
    "absl",
    "h5py",
    "matplotlib",
)
# Prefect's background services (logger named after the class) warn at exit while they flush
# their last events: routine, and printed after the command's own last line.
SHUTDOWN_NOTICE_LOGGERS = ("EventsWorker", "APILogWorker")


# Modules every Dask worker imports on start (Dask's `distributed.worker.preload`).
DASK_PRELOAD_ENV = "DASK_DISTRIBUTED__WORKER__PRELOAD"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false")


def log_file() -> Path:
    return Path(os.environ.get(LOG_FILE_ENV) or DEFAULT_LOG_FILE)


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null: C++ libraries write there directly, below Python's
    `sys.stderr`, and TensorFlow logs before absl's log level is read (TF_CPP_MIN_LOG_LEVEL)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Imports `tensorflow` (once, whoever asks first) with native stderr silenced, then leaves."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader

        class QuietLoader(importlib.abc.Loader):
            def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
                return loader.create_module(spec)

            def exec_module(self, module: ModuleType) -> None:
                with native_stderr_silenced():
                    loader.exec_module(module)
                logging.getLogger("tensorflow").setLevel(logging.ERROR)

        spec.loader = QuietLoader()
        return spec


def silence_tensorflow_startup() -> None:
    """Unless verbose: TensorFlow's import prints nothing, and its C++ log shows fatal errors
    only (the failed CUDA probe on a CPU machine is an ERROR line); Python-side TF logging
    shows errors. A no-op once TF is imported (a process's first import decides)."""
    if verbose() or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def set_verbose() -> None:
    """Everything back on, in this process and the processes it starts (Dask workers, checks)."""
    os.environ[VERBOSE_ENV] = "1"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietTensorFlowImport)]


def progress_bar(total: int | None, desc: str, unit: str) -> tqdm:
    """A terminal progress bar with rate and ETA; silent when stderr is not a terminal (logs, CI)
    and inside Dask workers (several bars would overwrite each other: the flow shows one)."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit == "text",
        dynamic_ncols=True,
        mininterval=0.5,
        leave=False,
        disable=None if not _in_dask_worker() else True,
    )


def _in_dask_worker() -> bool:
    if "distributed" not in sys.modules:
        return False
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


class _OneLineFormatter(logging.Formatter):
    """The console's formatter, minus tracebacks: a failure shows as its one-line message (the
    Prefect API and the log file keep the whole traceback)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if not (record.exc_info or record.exc_text):
            return self.inner.format(record)
        short = copy.copy(record)  # other handlers format the same record, traceback included
        short.msg, short.args = record.getMessage().splitlines()[0], None
        short.exc_info = short.exc_text = short.stack_info = None
        return self.inner.format(short) + f" (details: {log_file()})"


def quiet_console_logging() -> Path:
    """Set up Prefect's logging for a terminal session: unless verbose, tracebacks and INFO
    chatter of Dask and TensorFlow stay out of the console; everything goes to the log file."""
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()
    path = log_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    # Local Dask workers (which inherit the environment) run `dask_setup` below on start, so
    # their task failures reach the terminal as one line too, and the log file whole.
    os.environ.setdefault(DASK_PRELOAD_ENV, f'["{__name__}"]')
    if verbose():
        return path
    # Dask sets its loggers' levels from its config when `distributed` is imported, here and in
    # every worker process (which inherit the environment).
    os.environ["DASK_LOGGING__DISTRIBUTED"] = "warning"
    if "dask.config" in sys.modules:
        import dask.config

        dask.config.set({"logging.distributed": "warning"})
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in SHUTDOWN_NOTICE_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for console in root.handlers:
        if console is not handler and isinstance(console, logging.StreamHandler):
            console.setFormatter(_OneLineFormatter(console.formatter))
    return path


def dask_setup(worker: object) -> None:
    """Dask's preload hook (`distributed.worker.preload`): a local worker logs as the command
    that started it does."""
    quiet_console_logging()
