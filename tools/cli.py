"""What every alexnet-* entry point shares: its own flags, --help, quiet by default, errors on one line.

Each tool defines its flags on its own `flags.FlagValues` (`FLAGS = cli.flag_values()`), and its
`main(argv)` returns the exit status, so a test can run it in-process (`tests/helpers.run_tool`); `run` is
the console script around it.

- `--help` lists the tool's own flags with their help and defaults, and exits 0; `--helpfull` adds the
  flags every tool has (`--verbosity`).
- Library chatter is off by default: TensorFlow's C++ start-up lines (oneDNN notices, CUDA probes, the
  cuInit error on machines without a GPU) and absl INFO lines of TFDS and the SavedModel writer.
  `--verbosity=0` (1 and more for debug) brings them all back. Without it, a TF_CPP_MIN_LOG_LEVEL you set
  still governs TensorFlow's later C++ lines. Warnings still show.
- A library error whose message starts with `name=value` names the flag of the same name; `error` prints
  it as `--name=value`.
- How a library exception ends a tool is one table, `EXIT_STATUS`: `main` prints the error's one line and
  returns its status for any exception the table names, so a tool catches only what it says differently.
"""

import os
import re
import sys
import tempfile
from pathlib import Path

from absl import flags, logging


def flag_values():
    """A tool's own FlagValues, holding the flag every tool has."""
    values = flags.FlagValues()
    flags.DEFINE_integer("verbosity", None, "Show TensorFlow's and absl's own log lines: 0 for INFO, 1 and more "
                         "for debug (default: only warnings, and none of TensorFlow's start-up lines).",
                         flag_values=values)
    return values


# The exit status each exception a tool's work may raise ends it with: 2, a value the user gave is wrong; 1,
# the work failed; a stop by signal, 128 + the signal (the exception's own `status`: 143 SIGTERM, 130 Ctrl-C).
# Looked up by the error's class, then by the classes it derives from, by name: importing them would import
# TensorFlow before a tool's flags are checked.
EXIT_STATUS = {
    "alexnet_tf.shutdown.Stopped": "status",
    "KeyboardInterrupt": 130,
    "alexnet_tf.rendezvous.ClusterError": 1,
    "alexnet_tf.sources.DatasetError": 1,          # alexnet_tf.service.ServiceError too
    "alexnet_tf.metrics.NonFiniteLoss": 1,
    "alexnet_tf.export.ExportError": 1,
    "alexnet_tf.pretrained.WeightsError": 1,
    "alexnet_tf.predict.PredictError": 2,
    "alexnet_tf.workdir.WorkdirError": 2,
    "ValueError": 2,                                # a value only the library could check (e.g. a device)
    "OSError": 1,
    "tensorflow.python.framework.errors_impl.OpError": 1,
}


def status_of(error):
    """The exit status `error` ends a tool with (EXIT_STATUS), or None if the table does not name it."""
    for kind in type(error).__mro__:
        status = EXIT_STATUS.get(kind.__qualname__ if kind.__module__ == "builtins" else
                                 f"{kind.__module__}.{kind.__qualname__}")
        if status is not None:
            return getattr(error, status) if isinstance(status, str) else status
    return None


def fail(name, exc, message=None):
    """Prints the one line of `exc` (`message` if given: what the tool says of it) and returns its exit
    status (`status_of`)."""
    if isinstance(exc, KeyboardInterrupt):
        sys.stdout.write("\n")
        print(f"{name}: interrupted", file=sys.stderr)
    elif type(exc).__name__ == "Stopped":  # not an error: when it stopped, what was kept, how to go on
        print(f"{name}: {message or exc}", file=sys.stderr)
    else:
        error(name, message or exc)
    return status_of(exc)


def error(name, message):
    """Prints `<name>: error: <message>` on stderr, a parameter `x=...` at its start shown as the flag `--x=...`."""
    text = str(message)
    if re.match(r"^[a-z_]+=", text):
        text = "--" + text
    print(f"{name}: error: {text}", file=sys.stderr)


def check_folder(flag, path):
    """Raises ValueError (`flag=path: why`) unless `path` is a folder or can be created as one, and something
    can be written there: tried, by creating (and removing) an empty folder in it or in its nearest existing
    parent, since permission bits say nothing of read-only file systems or of /proc."""
    if not path:
        return
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise ValueError(f"{flag}={path}: is a file, not a folder")
    ancestor = next(p for p in [target, *target.parents] if p.exists())
    if not ancestor.is_dir():
        raise ValueError(f"{flag}={path}: cannot be created ({ancestor} is a file)")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".alexnet_tf_probe_", dir=ancestor))
    except OSError as e:
        where = "" if ancestor == target else f" ({ancestor} is not writable)"
        raise ValueError(f"{flag}={path}: cannot be written{where}: {e.strerror}") from None


def _import_tensorflow_quietly():
    """Imports TensorFlow with file descriptor 2 sent to a scratch file: its C++ libraries log their
    start-up lines before their log threshold is read, so TF_CPP_MIN_LOG_LEVEL cannot hide them.
    If the import fails, what it wrote is shown."""
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def start_tensorflow(values):
    """Imports TensorFlow (quietly unless --verbosity was given). Each tool calls it once its flags are
    checked, so a bad flag is reported before TensorFlow starts."""
    if values.verbosity is not None or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401
        return
    _import_tensorflow_quietly()


def _set_verbosity(values):
    """absl's and TensorFlow's log levels from --verbosity: quiet unless it was given."""
    if values.verbosity is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        logging.set_verbosity(logging.WARNING)
    else:
        logging.set_verbosity(values.verbosity)
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # absl's own flags: defaults, and no "logging before flag parsing" line


def _help(values, doc, full):
    print((doc or "").strip() + "\n")
    for module, defined in values.flags_by_module_dict().items():
        if full or module != __name__:
            print(values.module_help(module))
    if not full:
        print("\n--helpfull also lists --verbosity, which every tool has")


def main(name, values, argv, body, doc):
    """A tool's main: parses `argv` into `values` (a bad flag is one line and status 2; --help prints `doc`
    and the flags, status 0), then returns `body(positional arguments)`, an exit status. An exception that
    `EXIT_STATUS` names is its one line and its status (Ctrl-C: "interrupted", 130)."""
    if any(a in ("--help", "-h", "--helpshort", "-?", "--helpfull") for a in argv[1:]):
        _help(values, doc, "--helpfull" in argv[1:])
        return 0
    values.unparse_flags()
    try:
        rest = values(argv)
    except flags.Error as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    _set_verbosity(values)
    try:
        return body(rest[1:])
    except BaseException as e:  # noqa: BLE001  the table decides; anything else is a bug: its traceback
        if status_of(e) is None:
            raise
        return fail(name, e)


def run(tool_main):
    """The console script: `tool_main(sys.argv)` as the process's exit status."""
    sys.exit(tool_main(sys.argv))
