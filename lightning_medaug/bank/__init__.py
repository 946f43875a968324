"""Synthetic banks: generator samples written to disk in shards (resumable, with a manifest) and
read back as a memory-mapped torch ``Dataset``."""

from lightning_medaug.bank.plan import LabelPlan, label_plan
from lightning_medaug.bank.reader import SyntheticBank
from lightning_medaug.bank.writer import WriteSummary, shard_seed, write_bank

__all__ = ["SyntheticBank", "write_bank", "WriteSummary", "LabelPlan", "label_plan", "shard_seed"]
