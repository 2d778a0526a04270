"""``python -m edge_al`` runs the CLI."""

import sys

from .cli import main

sys.exit(main())
