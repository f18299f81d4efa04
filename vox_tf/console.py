"""What the command-line tools print: a quiet TensorFlow start, one line and one bar per phase.

Verbosity, the same for every command (``--verbose``):

    0  the summary line only
    1  (default) one line when each phase starts and a tqdm bar over its trials or epochs,
       with the ETA and the best figure so far
    2  everything underneath: Keras Tuner's trial tables and Keras' line per epoch

Bars go to stderr. In a terminal they redraw in place; in a log file (CI) they are written
at most every :data:`LOG_INTERVAL` seconds, so a long phase stays a handful of lines.
"""

import contextlib
import os
import sys
import warnings

from tqdm.auto import tqdm

LOG_INTERVAL = 60.0
"""Seconds between two bar updates when stderr is not a terminal."""


QUIET_MARKER = "VOX_TF_QUIET_TENSORFLOW"
"""Set by a vox_tf command that quieted TensorFlow, so the processes it starts (Beam's
workers) start TensorFlow as quietly: they inherit the environment, not the command line."""


def is_vox_tf_command():
    """Whether this process runs ``python -m vox_tf.<command>`` or was started by one."""
    argv = getattr(sys, "orig_argv", [])
    return os.environ.get(QUIET_MARKER) == "1" or any(
        flag == "-m" and module.startswith("vox_tf.") for flag, module in zip(argv, argv[1:]))


@contextlib.contextmanager
def _stderr_discarded():
    """Sends file descriptor 2 to /dev/null inside the block (C++ writes bypass sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def quiet_tensorflow_start():
    """Starts TensorFlow without its C++ start-up log, unless the user set TF_CPP_MIN_LOG_LEVEL.

    TensorFlow's start-up writes lines that read like failures on every CPU-only machine
    (``E0000 ... failed call to cuInit``, "Could not find cuda drivers", absl's "All log
    messages before absl::InitializeLog()"). Most come before its logging honours
    TF_CPP_MIN_LOG_LEVEL, so the import and the device discovery run with stderr discarded;
    afterwards warnings stay filtered and errors show (level 2). A failing import is retried
    with stderr open, so its message is never lost.
    """
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ and os.environ.get(QUIET_MARKER) != "1":
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ[QUIET_MARKER] = "1"
    try:
        with _stderr_discarded():
            import tensorflow as tf

            tf.config.list_physical_devices()
    except Exception:  # noqa: BLE001 - shown by the import below, with stderr open
        import tensorflow  # noqa: F401 - re-raises with the message visible


def quiet_expected_warnings():
    """Hides Python warnings about what vox_tf does on purpose.

    Hyperband continues a promising trial from its parent's weights with a fresh optimizer,
    so Keras warns on every such trial that it skipped the saved optimizer state.
    """
    warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")


def keras_verbosity(verbose):
    """Keras' fit verbosity for ours: a line per epoch at 2, nothing below (our bars show it)."""
    return 2 if verbose >= 2 else 0


def phase(verbose, title):
    """Prints a phase's opening line at verbosity 1 and 2."""
    if verbose >= 1:
        tqdm.write(title, file=sys.stderr)


def progress_bar(verbose, total, description, unit):
    """A tqdm bar over ``total`` trials or epochs, shown at verbosity 1 only (else disabled).

    Example:
        >>> with progress_bar(1, 20, "coarse search", "trial") as bar:
        ...     bar.update(1); bar.set_postfix_str("best 3 wrong")
    """
    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=description, unit=unit, file=sys.stderr,
                disable=verbose != 1, dynamic_ncols=interactive, leave=True,
                mininterval=0.5 if interactive else LOG_INTERVAL,
                maxinterval=10.0 if interactive else LOG_INTERVAL)
