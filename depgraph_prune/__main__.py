"""``python -m depgraph_prune``: the ``depgraph-prune`` command line (see :mod:`depgraph_prune.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
