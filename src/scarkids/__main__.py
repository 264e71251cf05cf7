"""``python -m scarkids ...`` (used by torchrun: ``torchrun ... -m scarkids train ...``)."""

import sys

from scarkids.cli import main

sys.exit(main())
