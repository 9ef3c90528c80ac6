"""`python -m abnet` is the `abnet` command (also under torchrun)."""

import sys

from .cli import main

sys.exit(main())
