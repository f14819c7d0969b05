"""``python -m shmflags COMMAND``: the ``shmflags`` CLI (``python -m shmflags supervisor`` runs the supervisor)."""
import sys

from shmflags.cli import main

sys.exit(main())
