"""``medaug evaluate``: how faithful, how novel and how private a synthetic bank is, as
``metrics.json`` and a self-contained report (see :func:`evaluate_bank`)."""

from lightning_medaug.evaluation.evaluate import check_compatible, evaluate_bank
from lightning_medaug.evaluation.inputs import (
           build_datamodule,
           load_data_config,
           read_privacy,
           real_splits,
)

__all__ = ["build_datamodule", "check_compatible", "evaluate_bank", "load_data_config", "read_privacy",
           "real_splits"]
