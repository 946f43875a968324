"""ClassificationTask under 2-process CPU DDP (gloo), run as a script: Lightning's "ddp"
strategy re-launches ``sys.argv``, which under pytest would re-run pytest."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from lightning_medaug.data import PhantomDataModule
from lightning_medaug.tasks import ClassificationTask

SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    import lightning as L
    import torch

    from lightning_medaug.data import PhantomDataModule
    from lightning_medaug.tasks import ClassificationTask

    if __name__ == "__main__":
        torch.set_num_threads(1)  # two processes on two cores
        out = Path(sys.argv[1])
        L.seed_everything(0, verbose=False)
        dm = PhantomDataModule(image_size=16, num_train=16, num_val=12, num_test=12, batch_size=4)
        task = ClassificationTask(backbone="test_resnet", lr=3e-3)
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0)
        trainer.fit(task, dm)
        metrics = trainer.validate(task, dm, verbose=False)[0]
        trainer.save_checkpoint(out / "final.ckpt")  # every rank calls it; rank 0 writes
        info = {"world_size": trainer.world_size, "rank": trainer.global_rank, "global_step": trainer.global_step,
                "metrics": metrics}
        (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(info))
''')


def test_two_process_ddp_fit_validates_with_synced_metrics(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=180,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]

    infos = [json.loads((tmp_path / f"rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    assert [i["rank"] for i in infos] == [0, 1]
    assert all(i["world_size"] == 2 and i["global_step"] == 3 for i in infos)
    for key in ("val/loss", "val/auc", "val/acc"):
        # Synced across processes: both ranks report the value over the whole validation set.
        assert infos[0]["metrics"][key] == infos[1]["metrics"][key]

    task = ClassificationTask.load_from_checkpoint(tmp_path / "final.ckpt", map_location="cpu").eval()
    assert task.hparams.backbone == "test_resnet" and task.hparams.lr == 3e-3
    assert torch.isfinite(task(torch.zeros(2, 1, 16, 16))).all()
    # the synced val/auc is the AUROC of the final weights over all 12 validation images, not one rank's 6
    dm = PhantomDataModule(image_size=16, num_train=16, num_val=12, num_test=12, batch_size=4)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    with torch.no_grad():
        probs = torch.cat([task.probabilities(task(batch["image"])) for batch in batches])
    labels = torch.cat([batch["label"] for batch in batches])
    assert len(labels) == 12 and infos[0]["metrics"]["val/auc"] == pytest.approx(
        float(binary_auroc(probs[:, 1], labels)), abs=1e-6)
