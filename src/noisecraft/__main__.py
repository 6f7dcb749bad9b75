"""``python -m noisecraft`` — the same as the ``noisecraft`` command."""

import sys

from .cli import main

sys.exit(main())
