"""VQ-VAE (van den Oord et al., "Neural Discrete Representation Learning", NeurIPS 2017) on MONAI's
``VQVAE``, 2D or 3D, with a simple per-position categorical prior for sampling.

The codebook is learned with exponential moving averages (paper, appendix A.1) and the encoder
with the commitment loss, both by MONAI's ``EMAQuantizer``; the loss is
``recon + commitment_cost * ||z_e - sg[z_q]||^2``. Two additions keep the codebook in use (without
them a small VQ-VAE collapses onto one or two codes): the codebook starts from encoder outputs of
the first training batch, and codes whose EMA usage falls below ``dead_code_threshold`` are
restarted at random encoder outputs (Dhariwal et al., "Jukebox", 2020).

A VQ-VAE alone is not a generative model: the paper fits an autoregressive prior over the code
maps. Here :meth:`VQVAE.sample` draws every latent position independently from the empirical
histogram of codes seen at that position during the last training epoch (per class when
``num_classes > 0``). That prior is honest and cheap but ignores dependencies between positions,
so samples are blotchier than the data; for a learned prior, train latent diffusion on
:meth:`VQVAE.encode` (``lightning_medaug.generative.latent_diffusion``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import VQVAE as MonaiVQVAE
from torch import Tensor

from lightning_medaug.generative.vae import (
    RECON_LOSSES,
    AutoencoderModule,
    reconstruction_loss,
)
from lightning_medaug.registry import register_generator
from lightning_medaug.sizes import SizeLike
from lightning_medaug.validation import (
    check_at_least,
    check_channels,
    check_choice,
    check_non_negative,
    check_positive,
)

__all__ = ["VQVAE"]


@register_generator("vqvae")
class VQVAE(AutoencoderModule):
    """Vector-quantised VAE (van den Oord et al. 2017) with a per-position code-histogram prior.

    Args:
        spatial_dims, in_channels, image_size, num_classes: see :class:`GenerativeModule`;
            ``num_classes > 0`` makes the prior class-conditional (the autoencoder is not).
        latent_channels: dimension of each codebook vector (MONAI's ``embedding_dim``).
        num_embeddings: codebook size.
        channels: feature channels per level; MONAI's VQVAE halves the resolution at every level,
            other sizes padded inside to multiples of ``2 ** len(channels)`` and cropped back.
        num_res_layers: residual layers per level.
        commitment_cost: weight of the commitment loss (beta in the paper).
        codebook_decay: EMA decay of the codebook updates.
        dead_code_threshold: a code whose EMA count of assignments per batch drops below this is
            restarted at a random encoder output; 0 disables restarts.
        recon_loss: ``"mse"`` or ``"l1"`` in [-1, 1] space.
        lr: Adam learning rate.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, image_size: SizeLike = 32, num_classes: int = 0,
                 latent_channels: int = 16, num_embeddings: int = 64, channels: Sequence[int] = (32, 64),
                 num_res_layers: int = 1, commitment_cost: float = 0.25, codebook_decay: float = 0.99,
                 dead_code_threshold: float = 1.0, recon_loss: str = "mse", lr: float = 1e-3):
        super().__init__(spatial_dims, in_channels, image_size, num_classes)
        self.save_hyperparameters()
        channels = tuple(int(c) for c in channels)
        _check_vqvae_args(channels, latent_channels, num_embeddings, num_res_layers, commitment_cost,
                          codebook_decay, dead_code_threshold, recon_loss, lr)
        self.set_downsampling(2 ** len(channels))
        self.net = MonaiVQVAE(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=in_channels, channels=channels,
            num_res_layers=num_res_layers, num_res_channels=channels,
            downsample_parameters=((2, 4, 1, 1),) * len(channels),
            upsample_parameters=((2, 4, 1, 1, 0),) * len(channels),
            num_embeddings=num_embeddings, embedding_dim=latent_channels, commitment_cost=commitment_cost,
            decay=codebook_decay,
        )
        # counts[group, code, *latent_spatial]: how often each code was chosen at each position in the
        # current training epoch; group is the class (or 0). A buffer, so it is saved with the weights.
        groups = max(1, num_classes)
        self.register_buffer("code_counts", torch.zeros((groups, num_embeddings) + self.latent_shape[1:]))
        self.register_buffer("codebook_initialised", torch.zeros((), dtype=torch.bool))

    @property
    def quantizer(self):
        """MONAI's ``EMAQuantizer``: the codebook and its EMA updates."""
        return self.net.quantizer.quantizer

    # -- first-stage interface -----------------------------------------------------------------------
    def code_indices(self, x: Tensor) -> Tensor:
        """Codebook index of every latent position, int64 (n, *latent_spatial); no codebook update."""
        return self.quantizer.quantize(self.net.encode(self.pad_to_network(x)))[2]

    def encode(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """The quantised latent (codebook vectors), shape ``(n, *latent_shape)``."""
        return self.quantizer.embed(self.code_indices(x)).to(x.dtype)

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Snap ``z`` to its nearest codebook vectors, then decode to images in [-1, 1]."""
        z_q = self.quantizer.embed(self.quantizer.quantize(z)[2]).to(z.dtype)
        return self.crop_to_image(self.net.decode(z_q)).clamp(-1.0, 1.0)

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Decode a map of codebook indices (n, *latent_spatial) to images in [-1, 1]."""
        return self.crop_to_image(self.net.decode(self.quantizer.embed(indices).to(self.dtype))).clamp(-1.0, 1.0)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Reconstruct ``x`` through the codebook."""
        return self.decode_indices(self.code_indices(x))

    # -- training --------------------------------------------------------------------------------------
    def loss_terms(self, image: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        z_e = self.net.encode(self.pad_to_network(image))
        if self.training:
            self._refresh_codebook(z_e)
        z_q, vq_loss, indices = self.quantizer(z_e)  # EMA codebook update in train mode
        recon = reconstruction_loss(self.crop_to_image(self.net.decode(z_q)), image, self.hparams.recon_loss)
        # one-hot sums rather than bincount/index_add_: deterministic on GPU too
        codes = F.one_hot(indices, self.hparams.num_embeddings).movedim(-1, 1).float()  # (n, K, *S)
        usage = codes.sum(dim=[0] + list(range(2, codes.ndim)))
        usage = usage / usage.sum()
        perplexity = torch.exp(-(usage * torch.log(usage + 1e-10)).sum())  # effective codebook size in use
        if self.training:
            self._count_codes(codes, labels)
        return {"loss": recon + vq_loss.float(), "recon": recon, "vq": vq_loss.float(), "perplexity": perplexity}

    @torch.no_grad()
    def _refresh_codebook(self, z_e: Tensor) -> None:
        """Data-dependent initialisation (first step) and dead-code restarts of the codebook."""
        q = self.quantizer
        if not bool(self.codebook_initialised):
            replace = torch.ones(q.num_embeddings, dtype=torch.bool, device=z_e.device)
            self.codebook_initialised.fill_(True)
        elif self.hparams.dead_code_threshold > 0:
            # ema_cluster_size is all-reduced by MONAI under DDP, so every rank picks the same codes.
            replace = q.ema_cluster_size < self.hparams.dead_code_threshold
        else:
            return
        if not bool(replace.any()):
            return
        flat = z_e.detach().float().movedim(1, -1).reshape(-1, q.embedding_dim)
        picks = flat[torch.randint(0, flat.shape[0], (q.num_embeddings,), device=flat.device)]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(picks, src=0)  # identical codebooks on every rank
        # MONAI keeps codes as ema_w / ema_cluster_size: restart each as "one assignment to itself".
        keep = ~replace.unsqueeze(1)
        q.embedding.weight.data.copy_(torch.where(keep, q.embedding.weight.data, picks))
        q.ema_w.copy_(torch.where(keep, q.ema_w, picks))
        q.ema_cluster_size.copy_(torch.where(replace, torch.ones_like(q.ema_cluster_size), q.ema_cluster_size))

    @torch.no_grad()
    def _count_codes(self, codes: Tensor, labels: Tensor | None) -> None:
        """Add one-hot ``codes`` (n, K, *S) to the histogram of each sample's class."""
        if labels is None:
            increment = codes.sum(0, keepdim=True)
        else:
            groups = F.one_hot(labels.long(), self.code_counts.shape[0]).to(codes.dtype)
            increment = torch.einsum("ng,nk...->gk...", groups, codes)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Sum every rank's codes, so all ranks hold the histogram of the whole epoch (DDP also
            # overwrites buffers with rank 0's before each forward, which is then harmless).
            torch.distributed.all_reduce(increment)
        self.code_counts.add_(increment)

    def on_train_epoch_start(self) -> None:
        self.code_counts.zero_()  # the prior follows the current codebook: count this epoch only

    # -- sampling ----------------------------------------------------------------------------------------
    def prior_probs(self, labels: Tensor | None, n: int) -> Tensor:
        """Categorical prior per sample and position, shape (n, *latent_spatial, K).

        Positions never counted for a class fall back to all classes' counts there, and
        positions never counted at all (an untrained model) to a uniform distribution.
        """
        counts = self.code_counts.float()
        pooled = counts.sum(0, keepdim=True)
        pooled = torch.where(pooled.sum(1, keepdim=True) > 0, pooled, torch.ones_like(pooled))
        counts = torch.where(counts.sum(1, keepdim=True) > 0, counts, pooled)
        group = labels if labels is not None else torch.zeros(n, dtype=torch.long, device=counts.device)
        return counts[group].movedim(1, -1)

    @torch.inference_mode()
    def sample(self, n: int, labels: Tensor | None = None, masks: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Draw each latent position's code from the per-position (per-class) histogram prior, then decode."""
        labels, _ = self.check_sample_args(n, labels, masks, generator)
        probs = self.prior_probs(labels, n)
        flat = probs.reshape(-1, probs.shape[-1]).to(self.noise_device(generator))
        indices = torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])
        return self.decode_indices(indices.to(self.device)).float()  # float32 even under autocast


def _check_vqvae_args(channels: tuple[int, ...], latent_channels: int, num_embeddings: int, num_res_layers: int,
                      commitment_cost: float, codebook_decay: float, dead_code_threshold: float, recon_loss: str,
                      lr: float) -> None:
    check_channels(channels)
    check_at_least(1, latent_channels=latent_channels)
    if num_embeddings < 2:
        raise ValueError(f"num_embeddings (codebook size) must be at least 2, got {num_embeddings}")
    check_non_negative(num_res_layers=num_res_layers, commitment_cost=commitment_cost)
    if not 0.0 <= codebook_decay < 1.0:
        raise ValueError(f"codebook_decay must be in [0, 1), got {codebook_decay}")
    if dead_code_threshold < 0:
        raise ValueError(f"dead_code_threshold must be >= 0 (0 disables restarts), got {dead_code_threshold}")
    check_choice("recon_loss", recon_loss, RECON_LOSSES)
    check_positive(lr=lr)
