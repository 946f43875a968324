"""Real + synthetic mixing for any LightningDataModule."""

from lightning_medaug.mixing.adapter import (
           IS_SYNTHETIC_KEY,
           SampleTemplate,
           SyntheticAdapter,
)
from lightning_medaug.mixing.batch_sampler import MixBatchSampler
from lightning_medaug.mixing.datamodule import SyntheticMixDataModule
from lightning_medaug.mixing.generated import GeneratedPool, generate_pool
from lightning_medaug.mixing.iterable import MixedIterable
from lightning_medaug.mixing.sampler import (
           MixSampler,
           balance_allocation,
           synthetic_count,
)
from lightning_medaug.mixing.structure import SampleStructure

__all__ = ["SyntheticMixDataModule", "MixSampler", "SampleTemplate", "SyntheticAdapter", "GeneratedPool",
           "generate_pool", "synthetic_count", "balance_allocation", "IS_SYNTHETIC_KEY", "MixBatchSampler",
           "MixedIterable", "SampleStructure"]
