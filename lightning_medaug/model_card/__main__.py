"""``python -m lightning_medaug.model_card FOLDER ...``: the same as ``medaug card``."""

import sys

from lightning_medaug.model_card.command import main

sys.exit(main())
