"""Paired SSIM / MS-SSIM / PSNR in [-1, 1], 2D and 3D."""

import pytest
import torch

from lightning_medaug.data import make_phantoms
from lightning_medaug.metrics import (
    PairedImageMetrics,
    ms_ssim_min_size,
    paired_image_metrics,
)


def test_identical_pairs_score_perfectly_and_noise_lowers_scores():
    images, _, _ = make_phantoms(6, 2, 32, seed=0)
    same = paired_image_metrics(images, images.clone(), ms_ssim=True, sigma=0.5, betas=(0.3, 0.3, 0.4))
    assert same["ssim"] == pytest.approx(1.0, abs=1e-6) and same["ms_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert same["psnr"] > 60
    noisy = (images + 0.1 * torch.randn_like(images)).clamp(-1, 1)
    scores = paired_image_metrics(noisy, images)
    assert "ms_ssim" not in scores  # 32 px is below the default minimum, so it is left out
    assert 0.2 < scores["ssim"] < 0.99 and 15 < scores["psnr"] < 30
    # The [-1, 1] range: an error of 0.1 everywhere is an MSE of 0.01 on a range of 2.
    assert paired_image_metrics(images * 0 + 0.1, images * 0)["psnr"] == pytest.approx(10 * torch.log10(
        torch.tensor(4 / 0.01)).item(), rel=1e-5)


def test_3d_volumes_and_batched_updates_match_one_call():
    volumes, _, _ = make_phantoms(4, 3, 12, seed=0)
    noisy = (volumes + 0.2 * torch.randn_like(volumes)).clamp(-1, 1)
    metrics = PairedImageMetrics(spatial_dims=3, ms_ssim=True, sigma=0.5, betas=(0.5, 0.5))
    metrics.update(noisy[:2], volumes[:2]), metrics.update(noisy[2:], volumes[2:])
    batched = {k: float(v) for k, v in metrics.compute().items()}
    assert set(batched) == {"psnr", "ssim", "ms_ssim"}
    assert batched == pytest.approx(paired_image_metrics(noisy, volumes, ms_ssim=True, sigma=0.5, betas=(0.5, 0.5)))
    assert 0 < batched["ssim"] < 0.95


def test_too_small_for_ms_ssim_says_the_minimum():
    assert ms_ssim_min_size() == 176  # 5 scales, sigma 1.5 (torchmetrics' defaults)
    metrics = PairedImageMetrics(ms_ssim=True)
    with pytest.raises(ValueError, match=r"MS-SSIM with 5 scales and sigma=1.5 needs every spatial side >= 176, "
                                         r"got \(28, 28\)"):
        metrics.update(torch.zeros(2, 1, 28, 28), torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="one shape"):
        metrics.update(torch.zeros(2, 1, 28, 28), torch.zeros(2, 1, 28, 27))
    with pytest.raises(ValueError, match="spatial_dims"):
        PairedImageMetrics(spatial_dims=3).update(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8))
