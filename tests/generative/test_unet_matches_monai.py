"""TimestepUNet is MONAI's DiffusionModelUNet without attention: same weights, same outputs.

Our UNet assembles MONAI's blocks and unrolls their loops (to run residual blocks in place when
sampling), with one deliberate difference: its middle block is two residual blocks, where MONAI's
always puts a self-attention block between them. So MONAI's network is built with no attention
levels and its middle attention replaced by the identity; everything else (time and class
embeddings, down/up blocks, skips, output) must then agree to float rounding, with and without
autograd (the in-place path), in 2D and 3D.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_medaug.generative.diffusion_unet import TimestepUNet

pytest.importorskip("einops")  # MONAI's attention blocks, built by DiffusionModelUNet, import it
from monai.networks.nets import DiffusionModelUNet  # noqa: E402

CHANNELS, GROUPS = (8, 16), 4


def _monai_weights(ours: TimestepUNet) -> dict[str, torch.Tensor]:
    """Our state dict under MONAI's key names: only the middle block's two residual blocks are named differently."""
    middle = {"middle_block.0.": "middle_block.resnet_1.", "middle_block.1.": "middle_block.resnet_2."}
    renamed = {}
    for key, value in ours.state_dict().items():
        prefix = next((p for p in middle if key.startswith(p)), None)
        renamed[middle[prefix] + key[len(prefix):] if prefix else key] = value
    return renamed


@pytest.mark.parametrize("spatial_dims, size", [(2, 16), (3, 8)])
@pytest.mark.parametrize("num_classes", [None, 3])
@pytest.mark.parametrize("num_res_blocks", [1, 2])
def test_forward_matches_monai_with_copied_weights(spatial_dims, size, num_classes, num_res_blocks):
    torch.manual_seed(0)
    ours = TimestepUNet(spatial_dims, in_channels=2, out_channels=1, channels=CHANNELS, num_res_blocks=num_res_blocks,
                        norm_num_groups=GROUPS, num_class_embeds=num_classes)
    # The output convolution starts at zero (MONAI's zero_module): randomise it, or every output is 0 and equal.
    for param in ours.parameters():
        nn.init.normal_(param, std=0.2)
    monai = DiffusionModelUNet(spatial_dims, in_channels=2, out_channels=1, num_res_blocks=num_res_blocks,
                               channels=CHANNELS, attention_levels=(False,) * len(CHANNELS), norm_num_groups=GROUPS,
                               norm_eps=1e-6, num_head_channels=CHANNELS[0], num_class_embeds=num_classes)
    monai.middle_block.attention = nn.Identity()  # the deliberate difference (module docstring)
    missing, unexpected = monai.load_state_dict(_monai_weights(ours), strict=True)
    assert not missing and not unexpected

    x = torch.randn(3, 2, *(size,) * spatial_dims)
    t = torch.tensor([0, 17, 999])
    labels = torch.tensor([0, 2, 1]) if num_classes else None
    expected = monai(x, t, class_labels=labels)
    assert expected.abs().mean() > 1e-2  # a real signal, not zeros that trivially match
    torch.testing.assert_close(ours(x, t, labels), expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # our in-place residual path when sampling
        torch.testing.assert_close(ours(x, t, labels), expected.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.for_sampling()(x, t, labels), expected.detach(), atol=1e-5, rtol=1e-5)
