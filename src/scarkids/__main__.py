"""``python -m scarkids ...`` (used by torchrun: ``torchrun ... -m scarkids train ...``)."""

import sys

from .cli import main

sys.exit(main())
