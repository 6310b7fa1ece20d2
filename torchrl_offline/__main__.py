"""``python -m torchrl_offline``: the ``torchrl-offline`` command line."""

import sys

from torchrl_offline.cli import main

if __name__ == "__main__":
    sys.exit(main())
