"""The user's own sampling rules under DDP: every rank draws the same plan and takes a disjoint share."""

import numpy as np
import torch
from torch.utils.data import BatchSampler, IterableDataset, SubsetRandomSampler, WeightedRandomSampler

from lightning_medaug.data import make_phantoms
from lightning_medaug.mixing import GeneratedPool, MixBatchSampler, MixedIterable, MixSampler, SampleTemplate
from lightning_medaug.mixing.adapter import SyntheticAdapter


def test_weighted_sampler_plan_is_the_same_on_every_rank_and_split_between_them():
    weights = torch.tensor([1.0] * 10 + [9.0] * 10)
    shares = []
    for rank in range(2):
        torch.manual_seed(rank)  # ranks whose global RNGs differ must still agree on the plan
        sampler = MixSampler(20, np.zeros(30, dtype=int), ratio=0.5, seed=4, num_replicas=2, rank=rank,
                             real_sampler=WeightedRandomSampler(weights, num_samples=20))
        sampler.set_epoch(2)
        shares.append(list(sampler))
    plan = sampler.epoch_indices().tolist()
    assert len(shares[0]) == len(shares[1]) == 20
    assert sorted(shares[0] + shares[1]) == sorted(plan)
    real = [i for i in plan if i < 20]
    assert np.mean([i >= 10 for i in real]) > 0.7  # the weights still choose the real samples


def test_subset_sampler_keeps_its_subset():
    sampler = MixSampler(20, np.zeros(10, dtype=int), ratio=0.5, real_sampler=SubsetRandomSampler(range(5)))
    real = [i for i in sampler if i < 20]
    assert sorted(real) == list(range(5)) and len(sampler) == 10


def test_batch_sampler_batches_split_between_ranks():
    inner = BatchSampler(SubsetRandomSampler(range(16)), batch_size=4, drop_last=False)
    ranks = [MixBatchSampler(inner, 16, np.zeros(16, dtype=int), ratio=0.5, seed=1, num_replicas=2, rank=r)
             for r in range(2)]
    batches = [list(s) for s in ranks]
    assert len(batches[0]) == len(batches[1]) == 2 == len(ranks[0])
    flat = [i for b in batches[0] + batches[1] for i in b]
    assert len(flat) == len(set(flat)) == 32  # 16 real, 16 synthetic, none on both ranks


class Numbers(IterableDataset):
    def __iter__(self):
        images, labels, _ = make_phantoms(12, image_size=8, seed=0)
        yield from zip(images, labels.tolist())


def test_stream_synthetic_picks_are_disjoint_across_ranks():
    images, labels, _ = make_phantoms(40, image_size=8, seed=1)
    pool = GeneratedPool(images, labels, num_classes=2)
    template = SampleTemplate((images[0], 0))
    template.bind_layout(pool.image_shape)
    seen = []
    for rank in range(2):
        mixed = MixedIterable(Numbers(), SyntheticAdapter(pool, template), ratio=0.5, num_replicas=2, rank=rank)
        synthetic = [s for s in mixed if not any(torch.equal(s[0], real[0]) for real in Numbers())]
        assert len(synthetic) == 12
        seen.append({s[0].numpy().tobytes() for s in synthetic})
    assert not seen[0] & seen[1]
