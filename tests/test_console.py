"""What the terminal shows: TensorFlow's native start-up lines silenced unless verbose, a failure as
one `error:` line with its traceback in the log file, and console records without tracebacks.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from penultimate.console import VERBOSE_ENV, _OneLineFormatter

IMPORT_AND_RUN_TF = "import penultimate, tensorflow as tf; print(int(tf.constant(1) + 1))"


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in (VERBOSE_ENV, "TF_CPP_MIN_LOG_LEVEL")}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**clean, **env}
    )


def test_tensorflow_starts_silently_unless_verbose() -> None:
    quiet = run_python(IMPORT_AND_RUN_TF)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "2"
    assert quiet.stderr.strip() == "", quiet.stderr
    # The same import, verbose: TensorFlow's own lines come back (so the quiet run is no accident).
    loud = run_python(IMPORT_AND_RUN_TF, **{VERBOSE_ENV: "1"})
    # Which C++ lines TensorFlow prints depends on the CPU (oneDNN's notice) and the build (cuInit).
    assert loud.returncode == 0
    assert any(line in loud.stderr for line in ("oneDNN", "cuInit")), loud.stderr


def test_a_failure_is_one_error_line_with_the_traceback_in_the_log_file(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        log = tmp_path / "run.log"
        result = subprocess.run(
            [sys.executable, "-m", "penultimate.cli", "--store", str(tmp_path), "serve",
             "--port", str(port)],
            capture_output=True, text=True, env={**os.environ, "PENULTIMATE_LOG_FILE": str(log)},
            timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(log) in lines[0]
    assert "Traceback (most recent call last)" in log.read_text()
    assert "penultimate serve failed" in log.read_text()


def test_console_records_lose_their_traceback_and_other_handlers_keep_it() -> None:
    try:
        raise ValueError("shard 3 is damaged\nsecond line")
    except ValueError:
        record = logging.LogRecord(
            "prefect.task_runs", logging.ERROR, __file__, 1, "task failed: %s", ("x",),
            sys.exc_info(),
        )  # fmt: skip
    console = _OneLineFormatter(logging.Formatter("%(levelname)s %(message)s")).format(record)
    assert console.startswith("ERROR task failed: x (details: ") and "\n" not in console
    full = logging.Formatter("%(message)s").format(record)
    assert "Traceback" in full and "shard 3 is damaged" in full


# 0.8 s in all: past progress_bar's 0.5 s refresh interval, so the bar draws mid-run.
COUNTED_STEP = """
import time
from penultimate.console import progress_bar

with progress_bar(400, "encoding", "text") as bar:
    for _ in range(10):
        time.sleep(0.08)
        bar.update(40)
"""


def on_terminal(code: str) -> str:
    """What `python -c code` shows on a 120-column terminal (a pty) on stderr."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    # A new pty is 0 columns wide, and tqdm draws nothing in 0 columns.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    with os.fdopen(leader, "rb", buffering=0) as terminal:
        process = subprocess.Popen(
            [sys.executable, "-c", code], stderr=follower, env={**os.environ}
        )
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = terminal.read(4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        assert process.wait() == 0, shown.decode(errors="replace")
    return shown.decode(errors="replace")


def test_long_steps_show_a_progress_bar_with_rate_and_eta_on_a_terminal_only() -> None:
    text = on_terminal(COUNTED_STEP)
    # A count done so far, the time taken and left, and the rate, as the bar moves.
    moving = r"encoding: +\d+%\|.*\| [1-9]\d*/400 \[00:\d\d<00:\d\d, \d+text/s\]"
    assert re.search(moving, text), text
    # Off a terminal (a log file, CI) the same run prints nothing.
    piped = run_python(COUNTED_STEP)
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr


# Slow batches from a generator (as fine-tuning feeds them): Keras cannot count the steps.
# 0.8 s an epoch, past progress_bar's 0.5 s refresh interval.
SLOW_EPOCHS = """
import os, time
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import numpy as np, tf_keras
from penultimate.training_log import EpochLog

class Slow(tf_keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        time.sleep(0.1)

def batches():
    for _ in range(8):
        yield np.zeros((4, 3), "float32"), np.zeros((4,), "float32")

import tensorflow as tf
spec = (tf.TensorSpec((4, 3), tf.float32), tf.TensorSpec((4,), tf.float32))
data = tf.data.Dataset.from_generator(batches, output_signature=spec)  # length unknown
model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(3,))])
model.compile("sgd", "mse")
model.fit(data, epochs=2, verbose=0, callbacks=[Slow(), EpochLog(print, 2, steps_per_epoch=8)])
"""


def test_each_training_epoch_shows_a_bar_over_its_batches_then_its_line() -> None:
    text = on_terminal(SLOW_EPOCHS)
    for epoch in (1, 2):
        bar = rf"epoch {epoch}/2: +\d+%\|.*\| [1-8]/8 \[00:\d\d<00:\d\d, +[\d.]+batch/s\]"
        assert re.search(bar, text), text


def test_every_command_and_option_says_what_it_is_for() -> None:
    """`--help` of every subcommand describes each argument (an undocumented flag prints bare)."""
    import argparse

    from penultimate.cli import build_parser

    (commands,) = (
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    undocumented = [
        f"{name} {action.dest}"
        for name, parser in commands.choices.items()
        for action in parser._actions
        if not action.help and not isinstance(action, argparse._HelpAction)
    ]
    assert undocumented == []
    assert all(choice.help for choice in commands._choices_actions)
