"""Paired image quality: SSIM, MS-SSIM and PSNR between outputs and their targets, 2D and 3D.

For outputs that have a ground truth: reconstructions of a VAE, mask-to-image translations of
a Pix2Pix model. Thin wrappers around torchmetrics (Wang et al. 2004, "Image Quality Assessment:
From Error Visibility to Structural Similarity"; Wang et al. 2003, "Multiscale Structural
Similarity for Image Quality Assessment") that fix what the library's data needs: images live in
[-1, 1] (data range 2, values clamped to it), PSNR is the mean of per-image values, 3D volumes use
the same code, and a volume too small for MS-SSIM fails with the size it needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.image import (
    MultiScaleStructuralSimilarityIndexMeasure,
    PeakSignalNoiseRatio,
    StructuralSimilarityIndexMeasure,
)

from lightning_medaug.data.batch import IMAGE_RANGE
from lightning_medaug.validation import check_spatial_dims

__all__ = ["MS_SSIM_BETAS", "PairedImageMetrics", "gaussian_kernel_size", "ms_ssim_min_size", "paired_image_metrics"]

#: torchmetrics' default MS-SSIM scale weights (Wang et al. 2003): five scales.
MS_SSIM_BETAS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def gaussian_kernel_size(sigma: float) -> int:
    """Width of the Gaussian window torchmetrics builds for ``sigma`` (about 3.5 sigma each side)."""
    return int(3.5 * sigma + 0.5) * 2 + 1


def ms_ssim_min_size(sigma: float = 1.5, num_scales: int = len(MS_SSIM_BETAS)) -> int:
    """Smallest side length MS-SSIM accepts for ``sigma`` and ``num_scales``.

    Every scale halves the image; the coarsest must still hold the Gaussian window, and
    torchmetrics additionally asks for ``side // (num_scales - 1)^2 >= window``.
    """
    window = gaussian_kernel_size(sigma)
    return max(2 ** num_scales, window * max(1, num_scales - 1) ** 2, (window // 2 + 1) * 2 ** (num_scales - 1))


class PairedImageMetrics(MetricCollection):
    """``psnr``, ``ssim`` (and ``ms_ssim``) between predictions and targets in [-1, 1], 2D or 3D.

    ``update(preds, target)`` with matching shapes ``(N, C, *S)``; ``compute()`` returns a dict of
    scalars. All states are sums or concatenations, so values are exact under DDP.

    Args:
        spatial_dims: 2 for images (N, C, H, W), 3 for volumes (N, C, D, H, W).
        ms_ssim: add MS-SSIM; every spatial side must then be at least :func:`ms_ssim_min_size`.
        sigma: width of the Gaussian SSIM window (1.5 as in Wang et al.; smaller for tiny images).
        betas: MS-SSIM scale weights; fewer weights means fewer scales and smaller allowed images.
        kwargs: torchmetrics ``Metric`` options for every member (``sync_on_compute``, ...).
    """

    def __init__(self, spatial_dims: int = 2, ms_ssim: bool = False, sigma: float = 1.5,
                 betas: Sequence[float] = MS_SSIM_BETAS, **kwargs: Any):
        check_spatial_dims(spatial_dims)
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        betas = tuple(float(b) for b in betas)
        if ms_ssim and not betas:
            raise ValueError("betas is empty: MS-SSIM needs at least one scale weight")
        # torchmetrics pads 3D inputs by kernel_size and filters with the sigma-sized window, so the
        # two must agree or small volumes fail inside conv3d.
        window = gaussian_kernel_size(sigma)
        ssim_args = {"data_range": IMAGE_RANGE, "sigma": sigma, "kernel_size": window}
        metrics: dict[str, Any] = {
            "psnr": PeakSignalNoiseRatio(data_range=IMAGE_RANGE, dim=tuple(range(1, spatial_dims + 2)), **kwargs),
            "ssim": StructuralSimilarityIndexMeasure(**ssim_args, **kwargs),
        }
        if ms_ssim:
            metrics["ms_ssim"] = MultiScaleStructuralSimilarityIndexMeasure(betas=betas, **ssim_args, **kwargs)
        # No compute groups: on a first batch of identical pairs SSIM and MS-SSIM states agree, and
        # torchmetrics would then merge them and report SSIM as MS-SSIM for the rest of the run.
        super().__init__(metrics, compute_groups=False)
        self.spatial_dims, self.sigma, self.num_scales, self.with_ms_ssim = spatial_dims, sigma, len(betas), ms_ssim

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        if preds.shape != target.shape:
            raise ValueError(f"preds and target must have one shape, got {tuple(preds.shape)} and "
                             f"{tuple(target.shape)}")
        if preds.ndim != self.spatial_dims + 2:
            raise ValueError(f"expected (N, C, *S) with {self.spatial_dims} spatial axes, got shape "
                             f"{tuple(preds.shape)}; set spatial_dims to match")
        spatial = tuple(preds.shape[2:])
        window = gaussian_kernel_size(self.sigma)
        if min(spatial) <= window // 2:
            raise ValueError(f"SSIM with sigma={self.sigma} (window {window}) needs every spatial side > "
                             f"{window // 2}, got {spatial}; pass a smaller sigma")
        if self.with_ms_ssim:
            needed = ms_ssim_min_size(self.sigma, self.num_scales)
            if min(spatial) < needed:
                raise ValueError(
                    f"MS-SSIM with {self.num_scales} scales and sigma={self.sigma} needs every spatial side >= "
                    f"{needed}, got {spatial}; pass fewer betas (scales), a smaller sigma, or ms_ssim=False "
                    "(ms_ssim_min_size(sigma, num_scales) gives the minimum)")
        super().update(preds.float(), target.float())


def paired_image_metrics(preds: Tensor, target: Tensor, ms_ssim: bool | None = None, sigma: float = 1.5,
                         betas: Sequence[float] = MS_SSIM_BETAS) -> dict[str, float]:
    """PSNR, SSIM and MS-SSIM of one paired set, as floats.

    ``ms_ssim=None`` includes MS-SSIM only when the images are large enough; ``True`` requires it.
    """
    spatial_dims = preds.ndim - 2
    if spatial_dims not in (2, 3):
        raise ValueError(f"preds must be (N, C, H, W) or (N, C, D, H, W), got shape {tuple(preds.shape)}")
    if ms_ssim is None:
        ms_ssim = min(preds.shape[2:]) >= ms_ssim_min_size(sigma, len(tuple(betas)))
    metrics = PairedImageMetrics(spatial_dims, ms_ssim=ms_ssim, sigma=sigma, betas=betas).to(preds.device)
    metrics.update(preds, target.to(preds.device))
    return {name: float(value) for name, value in metrics.compute().items()}

