"""What every alexnet-* entry point shares: absl's app.run, quiet by default, errors on one line.

- `--help` lists the tool's own flags with their help and defaults, and exits 0
  (absl's and TensorFlow's flags are under `--helpfull`).
- Library chatter is off by default: TensorFlow's C++ start-up lines (oneDNN
  notices, CUDA probes, the cuInit error on machines without a GPU) and absl
  INFO lines of TFDS and the SavedModel writer. `--verbosity=0` (absl's own
  flag; 1 and more for debug) brings them all back. Without it, a
  TF_CPP_MIN_LOG_LEVEL you set still governs TensorFlow's later C++ lines.
  Warnings still show.
- A library error whose message starts with `name=value` names the flag of the
  same name; `error` prints it as `--name=value`.
"""

import os
import re
import sys
import tempfile
from pathlib import Path

from absl import app, flags, logging


def error(name, message):
    """Prints `<name>: error: <message>` on stderr, a parameter `x=...` at its start shown as the flag `--x=...`."""
    text = str(message)
    if re.match(r"^[a-z_]+=", text):
        text = "--" + text
    print(f"{name}: error: {text}", file=sys.stderr)


def check_folder(flag, path):
    """Raises ValueError (`flag=path: why`) unless `path` is a folder or can be created as one."""
    if not path:
        return
    target = Path(path).expanduser()
    if target.exists():
        if not target.is_dir():
            raise ValueError(f"{flag}={path}: is a file, not a folder")
        return
    ancestor = next(p for p in target.parents if p.exists())
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{flag}={path}: cannot be created ({ancestor} is "
                         f"{'a file' if not ancestor.is_dir() else 'not writable'})")


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


def _quiet_unless_asked():
    """Hide TensorFlow's C++ log lines and absl INFO lines, unless --verbosity was given."""
    if flags.FLAGS["verbosity"].present:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    flags.FLAGS.verbosity = logging.WARNING  # absl would raise it to INFO after parsing
    logging.set_verbosity(logging.WARNING)


def start_tensorflow():
    """Imports TensorFlow (quietly unless --verbosity was given). Each tool calls it once its flags are
    checked, so a bad flag is reported before TensorFlow starts."""
    if flags.FLAGS["verbosity"].present or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401
        return
    _import_tensorflow_quietly()


def run(main, name, also_help=()):
    """Runs `main` under absl; a bad flag value prints `<name>: error: ...` and exits with status 2.
    `--help` lists the flags of main's module and of the modules named in `also_help`."""
    module = sys.modules[main.__module__]

    def parse_flags(argv):
        if any(a in ("--help", "-h", "--helpshort", "-?") for a in argv[1:]):
            print((module.__doc__ or "").strip() + "\n")
            # absl files a `python -m` main's flags under its script path.
            for key in [sys.argv[0] if module.__name__ == "__main__" else module.__name__, *also_help]:
                print(flags.FLAGS.module_help(key))
            print("\nabsl's and TensorFlow's own flags: --helpfull")
            sys.exit(0)
        try:
            rest = flags.FLAGS(argv)
        except flags.Error as e:
            print(f"{name}: error: {e}", file=sys.stderr)
            sys.exit(2)
        _quiet_unless_asked()
        return rest

    def main_without_traceback(argv):
        try:
            return main(argv)
        except KeyboardInterrupt:  # Ctrl-C outside the training loop (which checkpoints and exits itself)
            sys.stdout.write("\n")
            print(f"{name}: interrupted", file=sys.stderr)
            return 130

    app.run(main_without_traceback, flags_parser=parse_flags)
