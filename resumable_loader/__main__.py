"""``python -m resumable_loader ...`` runs the ``resumable-loader`` command."""

from __future__ import annotations

import sys

from resumable_loader.cli import main

sys.exit(main())
