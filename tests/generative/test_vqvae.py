"""VQ-VAE: training with a real Trainer, the code-histogram prior, sampling, saving, validation."""

import lightning as L
import pytest
import torch
from generative_testing import assert_distinct_samples
from lightning.pytorch.callbacks import LambdaCallback

from lightning_medaug.data import PhantomDataModule, make_phantoms
from lightning_medaug.generative import load_generator
from lightning_medaug.generative.vqvae import VQVAE
from lightning_medaug.registry import create_generator

SIZES = {2: 16, 3: 8}
STEPS = {2: 40, 3: 20}
LR = {2: 3e-3, 3: 1e-2}


def tiny_vqvae(spatial_dims: int = 2, **kwargs) -> VQVAE:
    kwargs = {"spatial_dims": spatial_dims, "image_size": SIZES[spatial_dims], "channels": (8, 16),
              "latent_channels": 4, "num_embeddings": 16, "lr": LR[spatial_dims], **kwargs}
    return create_generator("vqvae", **kwargs)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("num_classes", [0, 2])
def test_overfit_prior_sample_and_reload(spatial_dims, num_classes, tmp_path):
    model = tiny_vqvae(spatial_dims, num_classes=num_classes)
    data = PhantomDataModule(spatial_dims=spatial_dims, image_size=SIZES[spatial_dims], num_train=16, num_val=8,
                             num_test=8, batch_size=16)

    def gen():
        return torch.Generator().manual_seed(3)

    before = model.sample(8, generator=gen())
    losses, perplexity = [], []
    record = LambdaCallback(on_train_batch_end=lambda tr, m, out, b, i: (
        losses.append(float(out["loss"])), perplexity.append(float(tr.callback_metrics["train/perplexity_step"]))))
    # step figures reach callback_metrics on the batches the loggers write: here every batch
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, max_steps=STEPS[spatial_dims], limit_val_batches=0,
                        log_every_n_steps=1, callbacks=[record])
    trainer.fit(model, datamodule=data)
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3]), losses
    if spatial_dims == 2:  # (8^3 phantoms barely differ at a 2^3 latent: too few vectors to judge 3D)
        assert perplexity[-1] > 4.0, perplexity  # the codebook did not collapse onto one or two codes

    # the prior holds the last epoch's codes: one batch of 16 images, every latent position counted once
    positions = torch.Size(model.latent_shape[1:]).numel()
    counts = model.code_counts.sum(dim=tuple(range(1, model.code_counts.ndim)))
    assert float(counts.sum()) == 16 * positions
    if num_classes:
        per_class = torch.bincount(data.datasets["train"].labels, minlength=2).float() * positions
        assert torch.equal(counts, per_class)

    model.eval()
    after = model.sample(8, generator=gen())
    assert after.shape == (8,) + model.image_shape
    if spatial_dims == 2:
        assert_distinct_samples(after)  # codes drawn per sample and position
    else:  # the 16 volumes share one code per latent position: every sample decodes exactly that map
        per_code = model.code_counts.sum(0)  # (codebook, *latent positions)
        assert bool((per_code.max(0).values == 16).all())
        assert torch.equal(after, model.decode_indices(per_code.argmax(0).expand(8, *per_code.shape[1:])))
    data_mean = make_phantoms(16, spatial_dims, SIZES[spatial_dims])[0].mean()
    assert abs(after.mean() - data_mean) < 0.25 and abs(after.mean() - data_mean) < abs(before.mean() - data_mean)
    assert torch.equal(after, model.sample(8, generator=gen()))
    if spatial_dims == 2:  # (in 3D the tiny prior is one code per position: every seed decodes alike)
        assert not torch.equal(after, model.sample(8, generator=torch.Generator().manual_seed(4)))

    metrics = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=1).validate(model, datamodule=data, verbose=False)[0]
    assert {"val/loss", "val/recon", "val/vq"} <= set(metrics)

    reloaded = load_generator(model.save_pretrained(tmp_path / "pretrained"))
    assert torch.equal(reloaded.code_counts, model.code_counts)
    assert torch.equal(reloaded.sample(8, generator=gen()), after)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    restored = VQVAE.load_from_checkpoint(tmp_path / "model.ckpt", map_location="cpu").eval()
    assert torch.equal(restored.sample(8, generator=gen()), after)


def test_labels_select_the_class_prior():
    model = tiny_vqvae(num_classes=2).eval()
    assert model.latent_shape == (4, 4, 4)
    # class 0 always used code 0, class 1 always code 1: the per-class prior must follow
    model.code_counts.zero_()
    model.code_counts[0, 0] = 5.0
    model.code_counts[1, 1] = 5.0
    probs = model.prior_probs(torch.tensor([0, 1]), 2)
    assert probs.shape == (2, 4, 4, 16)
    assert torch.all(probs[0].argmax(-1) == 0) and torch.all(probs[1].argmax(-1) == 1)
    zeros = model.sample(2, labels=torch.tensor([0, 0]), generator=torch.Generator().manual_seed(0))
    assert torch.equal(zeros[0], zeros[1])  # one code everywhere: deterministic given the class
    assert torch.allclose(zeros[:1], model.decode_indices(torch.zeros(1, 4, 4, dtype=torch.long)), atol=1e-5)
    untrained = tiny_vqvae().eval()  # no counts yet: a uniform prior, so seeds differ
    assert not torch.equal(untrained.sample(2, generator=torch.Generator().manual_seed(0)),
                           untrained.sample(2, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="unconditional"):
        untrained.sample(2, labels=torch.tensor([0, 1]))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_first_stage_interface(spatial_dims):
    model = tiny_vqvae(spatial_dims).eval()
    side = SIZES[spatial_dims] // 4
    assert model.latent_shape == (4,) + (side,) * spatial_dims
    x = make_phantoms(3, spatial_dims, SIZES[spatial_dims])[0]
    z = model.encode(x)
    assert z.shape == (3,) + model.latent_shape
    codebook = model.quantizer.embedding.weight
    # every latent vector is a codebook entry
    flat = z.movedim(1, -1).reshape(-1, 4)
    assert torch.cdist(flat, codebook).min(dim=1).values.max() < 1e-5
    out = model.decode(z + 1e-4)  # decode snaps to the nearest code first
    assert torch.equal(out, model.decode(z)) and out.shape == x.shape and out.abs().max() <= 1


@pytest.mark.parametrize("kwargs, match", [
    ({"spatial_dims": 4}, "spatial_dims must be 2 or 3"),
    ({"image_size": [28, 2]}, "at least 4 on every axis"),
    ({"num_embeddings": 1}, "num_embeddings"),
    ({"codebook_decay": 1.0}, "codebook_decay"),
    ({"dead_code_threshold": -1.0}, "dead_code_threshold"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VQVAE(**kwargs)


DDP_SCRIPT = """
import sys
import torch
import lightning as L
from lightning_medaug.data import PhantomDataModule
from lightning_medaug.generative.callbacks import FiniteLossGuard
from lightning_medaug.generative.vqvae import VQVAE

torch.set_num_threads(1)
model = VQVAE(image_size=16, channels=(8, 16), latent_channels=4, num_embeddings=16, num_classes=2)
data = PhantomDataModule(image_size=16, num_train=16, num_val=4, num_test=4, batch_size=4)
trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    limit_val_batches=0, callbacks=[FiniteLossGuard()])
trainer.fit(model, datamodule=data)
torch.save({"counts": model.code_counts, "codebook": model.quantizer.embedding.weight.detach()},
           f"{sys.argv[1]}/rank{trainer.global_rank}.pt")
"""


def test_ddp_ranks_share_codebook_and_whole_epoch_histogram(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "ddp_vqvae.py"
    script.write_text(DDP_SCRIPT)
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, timeout=300, cwd=tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert torch.equal(ranks[0]["codebook"], ranks[1]["codebook"])
    assert torch.equal(ranks[0]["counts"], ranks[1]["counts"])
    # 16 training images over 2 ranks, 4x4 latent positions each, counted once per class
    labels = PhantomDataModule(image_size=16, num_train=16, num_val=4, num_test=4)
    labels.setup("fit")
    per_class = torch.bincount(labels.datasets["train"].labels, minlength=2).float() * 16
    assert torch.equal(ranks[0]["counts"].sum(dim=(1, 2, 3)), per_class)


def test_bf16_mixed_training_and_sampling():
    model = tiny_vqvae(num_classes=2)
    data = PhantomDataModule(image_size=16, num_train=8, num_val=4, num_test=4, batch_size=8)
    run = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, max_steps=2, limit_val_batches=0, precision="bf16-mixed")
    run.fit(model, datamodule=data)
    assert torch.isfinite(run.callback_metrics["train/loss"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        images = model.sample(2, generator=torch.Generator().manual_seed(0))
    # float32 out, and the float32 samples up to bfloat16 precision
    full = model.sample(2, generator=torch.Generator().manual_seed(0))
    assert images.dtype == torch.float32 and torch.allclose(images, full, atol=0.05)
