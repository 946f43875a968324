"""The EMA's foreach update against torch's own ``AveragedModel.update_parameters`` (the update it replaces)."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from lightning_medaug.generative.ema import EMA


def _network() -> nn.Module:
    # batch norm: float buffers that are averaged and an integer one that is copied
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.SiLU(), nn.Conv2d(4, 2, 1))


def _reference(model: nn.Module, decay: float) -> AveragedModel:
    """torch's per-tensor update with the warm-up decay, as the EMA computed it before."""

    def multi_avg(averaged, current, num_averaged):
        step = int(num_averaged)
        d = min(decay, (1 + step) / (10 + step))
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:
            for a, c in zip(averaged, current):
                a.copy_(c)

    return AveragedModel(model, multi_avg_fn=multi_avg, use_buffers=True)


def _train_a_little(model: nn.Module, steps: int, seed: int) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = model(torch.randn(4, 1, 6, 6, generator=generator)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_update_matches_torch_averaged_model_bit_for_bit():
    torch.manual_seed(0)
    model = _network()
    ema, reference = EMA(model, decay=0.9), _reference(model, decay=0.9)
    for step in range(6):  # the first update copies, the next ones blend through the warm-up
        _train_a_little(model, 1, seed=step)
        ema.update(model)
        with torch.no_grad():
            reference.update_parameters(model)
    ours, theirs = ema.module.state_dict(), reference.module.state_dict()
    assert set(ours) == set(theirs)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    assert ours["1.num_batches_tracked"] == model[1].num_batches_tracked == 6
    assert int(ema.averaged.n_averaged) == int(reference.n_averaged) == 6
    assert not torch.equal(ours["0.weight"], model[0].weight)  # an average, not a copy


def test_a_loaded_count_sets_the_warm_up_of_the_next_update():
    torch.manual_seed(0)
    model = _network()
    source = EMA(model, decay=0.9)
    for step in range(3):
        _train_a_little(model, 1, seed=step)
        source.update(model)
    resumed, reference = EMA(_network(), decay=0.9), _reference(_network(), decay=0.9)
    resumed.load_state_dict(source.state_dict())  # a resumed run: n_averaged = 3
    reference.load_state_dict(source.averaged.state_dict())
    _train_a_little(model, 1, seed=3)
    resumed.update(model)
    with torch.no_grad():
        reference.update_parameters(model)
    for name, value in resumed.module.state_dict().items():
        assert torch.equal(value, reference.module.state_dict()[name]), name
    assert int(resumed.averaged.n_averaged) == 4
