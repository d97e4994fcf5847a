"""What every alexnet-* entry point shares: absl's app.run, with bad flags reported on one line."""

import sys

from absl import app, flags


def run(main, name):
    """Runs `main` under absl; a bad flag value prints `<name>: error: ...` and exits with status 2."""
    def parse_flags(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            print(f"{name}: error: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(main, flags_parser=parse_flags)
