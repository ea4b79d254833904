"""``python -m gpucnn``: the gpucnn command line."""
import sys

from .cli import main

sys.exit(main())
