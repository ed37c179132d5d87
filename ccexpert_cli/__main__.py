"""``python -m ccexpert_cli``: the ``ccexpert`` command."""

import sys

from ccexpert_cli.main import main

sys.exit(main())
