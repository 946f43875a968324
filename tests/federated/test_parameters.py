"""What sites average and keep, per family; FedProx's decoupled pull towards the global weights."""

import lightning as L
import torch

from lightning_medaug.data import PhantomDataModule
from lightning_medaug.federated.parameters import ProximalPull, local_keys, shared_state
from lightning_medaug.registry import create_generator


def test_discriminators_and_counters_stay_local_ema_is_shared():
    gan = create_generator("cgan", image_size=16, num_classes=2)
    local = local_keys(gan)
    assert any(k.startswith("discriminator.") for k in local)
    assert all(k.startswith("discriminator.") or not gan.state_dict()[k].is_floating_point() for k in local)
    shared = shared_state(gan)
    assert any(k.startswith("ema.") for k in shared) and any(k.startswith("generator.") for k in shared)
    assert not any(k.startswith("discriminator.") for k in shared)
    assert any(k.startswith("discriminator.") for k in shared_state(gan, average_training_parts=True))


def test_proximal_pull_at_lr_times_mu_one_keeps_the_global_weights():
    model = create_generator("cvae", image_size=16, num_classes=2, channels=[8, 16], norm_num_groups=4,
                             latent_channels=2, lr=1e-2)
    anchor = shared_state(model)
    data = PhantomDataModule(image_size=16, num_train=16, num_val=4, num_test=4, batch_size=8)
    trainer = L.Trainer(max_epochs=1, callbacks=[ProximalPull(anchor, mu=100.0)], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    params = dict(model.named_parameters())
    assert all(torch.allclose(params[k], anchor[k]) for k in anchor if k in params)  # lr * mu = 1: back to g
