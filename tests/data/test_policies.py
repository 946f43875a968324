"""TrivialAugmentWide / RandAugment on the library's 1-channel [-1, 1] images."""

import pytest
import torch
from torch.utils.data import DataLoader

from lightning_medaug.data import PhantomDataset, PolicyAugmentation


@pytest.mark.parametrize("policy", ["trivialaugment", "randaugment"])
def test_policy_keeps_shape_range_and_dtype_of_a_grayscale_image(policy):
    image = torch.rand(1, 28, 28) * 2 - 1
    augment = PolicyAugmentation(policy, seed=0)
    outs = [augment({"image": image, "label": torch.tensor(1)}) for _ in range(40)]
    for out in outs:
        assert out["image"].shape == (1, 28, 28) and out["image"].dtype == torch.float32
        assert out["image"].min() >= -1 and out["image"].max() <= 1
        assert int(out["label"]) == 1
    changed = sum(not torch.allclose(out["image"], image, atol=1 / 127.5) for out in outs)
    assert changed >= 20  # the policy does something to most images (identity is one of its operations)
    # seeded: the same seed replays the same draws, and the global torch generator is left alone
    state = torch.get_rng_state()
    again = PolicyAugmentation(policy, seed=0)
    assert all(torch.equal(again({"image": image})["image"], out["image"]) for out in outs)
    assert torch.equal(torch.get_rng_state(), state)


def test_workers_draw_differently():
    data = PhantomDataset(8, image_size=16, with_masks=False)
    data.transform = PolicyAugmentation("randaugment", num_ops=3, seed=0)

    class Augmented(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return data.transform({"image": data.images[0]})["image"]

    batches = torch.cat(list(DataLoader(Augmented(), batch_size=2, num_workers=2)))
    assert not torch.equal(batches[0], batches[2])  # worker 0 and worker 1 start from different seeds


def test_refuses_volumes_masks_and_bad_arguments():
    with pytest.raises(ValueError, match="2D image policy"):
        PolicyAugmentation("trivialaugment", spatial_dims=3)
    with pytest.raises(ValueError, match="policy must be one of"):
        PolicyAugmentation("autoaugment")
    with pytest.raises(ValueError, match="magnitude"):
        PolicyAugmentation("randaugment", magnitude=40)
    augment = PolicyAugmentation()
    with pytest.raises(ValueError, match="mask"):
        augment({"image": torch.zeros(1, 8, 8), "mask": torch.zeros(1, 8, 8)})
    with pytest.raises(ValueError, match="shape"):
        augment({"image": torch.zeros(1, 4, 8, 8)})
