"""``python -m torchrl_offline``: the ``torchrl-offline`` command line."""

import sys


def _run() -> int:
    """Imports the command line and runs it; Ctrl-C during the import is one line and
    exit status 130, as it is later (torch and TorchRL are imported by the subcommand
    that runs, not here)."""
    try:
        from torchrl_offline.cli import main
    except KeyboardInterrupt:
        print("torchrl-offline: interrupted", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(_run())
