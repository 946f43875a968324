"""CUDA-graph replay of the diffusion sampling loop: the same images as eager sampling, on a GPU."""

import pytest
import torch

from lightning_medaug.generative.cuda_graphs import GraphedCall, use_cuda_graph
from lightning_medaug.generative.diffusion import DDPM

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_default_is_graphs_on_cuda_only():
    assert use_cuda_graph(None, torch.device("cuda", 0)) is True
    assert use_cuda_graph(None, torch.device("cpu")) is False
    assert use_cuda_graph(False, torch.device("cuda", 0)) is False


def test_asking_for_graphs_on_the_cpu_is_an_error():
    model = DDPM(image_size=8, channels=(8, 16), norm_num_groups=4, num_inference_steps=2).eval()
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device"):
        model.sample(2, cuda_graph=True)


def random_ddpm(**kwargs) -> DDPM:
    """A DDPM whose every weight is random (a fresh UNet's last layer is zero: any path would match)."""
    torch.manual_seed(0)
    model = DDPM(image_size=16, channels=(16, 32), norm_num_groups=8, **kwargs)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return model.cuda().eval()


@needs_cuda
@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++"])
@pytest.mark.parametrize("num_classes", [0, 2])
def test_graph_replay_gives_the_eager_images(sampler, num_classes):
    model = random_ddpm(num_classes=num_classes, guidance_scale=2.0)
    labels = torch.tensor([0, 1, 1, 0], device="cuda") if num_classes else None
    kwargs = dict(labels=labels, sampler=sampler, num_inference_steps=8)
    eager = model.sample(4, generator=torch.Generator().manual_seed(3), cuda_graph=False, **kwargs)
    graphed = model.sample(4, generator=torch.Generator().manual_seed(3), cuda_graph=True, **kwargs)
    assert eager.abs().max() > 0.1  # a real, non-trivial image
    torch.testing.assert_close(graphed, eager, atol=1e-4, rtol=1e-4)


@needs_cuda
def test_graph_replay_under_bf16_autocast_matches_eager():
    model = random_ddpm()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = model.sample(4, generator=torch.Generator().manual_seed(5), num_inference_steps=6, cuda_graph=False)
        graphed = model.sample(4, generator=torch.Generator().manual_seed(5), num_inference_steps=6, cuda_graph=True)
    assert (graphed - eager).abs().max() < 5e-2


@needs_cuda
def test_outputs_survive_later_replays():
    calls = GraphedCall(lambda x, t: x * 2 + t)
    first = calls(torch.ones(3, device="cuda"), torch.tensor(1))
    second = calls(torch.zeros(3, device="cuda"), torch.tensor(5))
    assert first.tolist() == [3.0, 3.0, 3.0] and second.tolist() == [5.0, 5.0, 5.0]
    assert calls.graph is not None and not calls.eager
