"""Differentially private training of generators: DP-SGD with Opacus, as a Lightning Callback.

DP-SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016): every optimizer step
draws a Poisson-subsampled batch, clips each example's gradient to ``max_grad_norm``, sums, adds
Gaussian noise of standard deviation ``noise_multiplier * max_grad_norm`` and averages over the
expected batch size. The privacy spent, ``(epsilon, delta)``, is tracked by an accountant: Renyi DP
(Mironov, "Renyi Differential Privacy", CSF 2017; Mironov et al. 2019 for the subsampled Gaussian)
or the tighter PRV accountant (Gopi et al., "Numerical Composition of Differential Privacy",
NeurIPS 2021).

:class:`DifferentialPrivacy` turns it on for any generator trained with automatic optimization and
one optimizer (the VAE family): add it to ``trainer.callbacks`` (see
``recipes/dp_vae_pneumonia.yaml``). The module itself is untouched: per-example gradients come from
Opacus hooks attached to its layers (no wrapper, so the saved weights carry no ``_module.`` prefix
and load with :func:`~lightning_medaug.generative.load_generator`). The guarantee covers the
training set at the level of one training example; when a patient contributes several images,
the patient-level guarantee is weaker (group privacy).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lightning_medaug.compat import wrap_train_dataloader
from lightning_medaug.generative.privacy_accounting import calibrate_noise, epsilon_spent, steps_within_budget

__all__ = ["ACCOUNTANTS", "PRIVACY_REPORT", "DifferentialPrivacy", "load_privacy_report", "unsupported_layers"]

#: Privacy accountants offered: Renyi DP and the (tighter, slower) privacy random variable one.
ACCOUNTANTS = ("rdp", "prv")
#: Name of the JSON file with the privacy spent, written in the run folder and beside the generator.
PRIVACY_REPORT = "privacy.json"
#: The folder ``medaug fit`` exports a trained generator into, inside the run folder.
EXPORT_FOLDER = "generator"
#: Precisions that keep per-example gradients exact: fp16 uses a loss scaler, which would scale the
#: per-example gradients before they are clipped.
_PRECISIONS = ("32-true", "64-true", "bf16-mixed", "bf16-true")
_HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect to module outputs"


def _import_opacus() -> Any:
    try:
        import opacus
    except ImportError as err:
        raise ImportError('differential privacy needs Opacus: pip install "lightning-medaug[dp]"') from err
    return opacus


def unsupported_layers(module: nn.Module) -> list[str]:
    """Names of the layers of ``module`` that break per-example privacy (e.g. BatchNorm, which mixes
    examples of a batch and keeps data statistics in buffers); empty when all are supported."""
    _import_opacus()
    from opacus.validators import ModuleValidator

    found = []
    for name, sub in module.named_modules():
        validator = ModuleValidator.VALIDATORS.get(type(sub))
        trainable = any(p.requires_grad for p in sub.parameters(recurse=False))
        has_buffers = any(True for _ in sub.buffers(recurse=False))
        if (validator is not None and validator(sub)) or (trainable and has_buffers):
            found.append(f"{name or '<root>'} ({type(sub).__name__})")
    return found


class DifferentialPrivacy(L.Callback):
    """Train the module with DP-SGD (Abadi et al. 2016) through Opacus, and account for it.

    At fit start the callback checks that every layer supports per-example gradients, turns the
    train loader into a Poisson-sampled one (needed for the accounting to hold), attaches Opacus'
    per-example gradient hooks to the module's layers and wraps the optimizer Lightning holds in an
    Opacus ``DPOptimizer``. Each epoch it logs ``dp/epsilon`` and ``dp/delta``; at fit end it writes
    :data:`PRIVACY_REPORT` into the run folder (``trainer.log_dir``) and, for generators, into its
    ``generator/`` subfolder where ``medaug fit`` exports the model. The accountant's history is
    saved in checkpoints, so a resumed run keeps counting.

    Pass ``target_epsilon`` alone to calibrate the noise so that the planned steps
    (``trainer.estimated_stepping_batches``) end at or below it; pass ``noise_multiplier`` alone to
    fix the noise and report whatever epsilon results; pass both to fix the noise and stop training
    (with a warning) before a step would take epsilon past ``target_epsilon``.

    The module's training loss must be a mean over the batch of per-example losses (as in every
    autoencoder of this library); training must use one device, one optimizer, automatic
    optimization, ``accumulate_grad_batches=1`` and 32-bit or bf16 precision. Lightning's
    ``gradient_clip_val`` has no effect: per-example clipping at ``max_grad_norm`` replaces it. The
    guarantee covers the model (and anything drawn from it), not the training losses Lightning logs.

    Args:
        target_epsilon: the privacy budget epsilon (> 0).
        noise_multiplier: noise standard deviation relative to ``max_grad_norm`` (>= 0).
        target_delta: the delta of the guarantee, in (0, 1); ``None`` takes ``1 / (10 N)`` for a
            training set of ``N`` examples, below the ``1 / N`` a meaningful delta must stay under.
        max_grad_norm: per-example gradient clipping bound (L2 over all parameters).
        accountant: ``"rdp"`` (Renyi DP, fast) or ``"prv"`` (tighter epsilon, slower).
    """

    def __init__(self, target_epsilon: float | None = None, noise_multiplier: float | None = None,
                 target_delta: float | None = None, max_grad_norm: float = 1.0, accountant: str = "rdp"):
        _import_opacus()
        if target_epsilon is None and noise_multiplier is None:
            raise ValueError("DifferentialPrivacy needs target_epsilon (to calibrate the noise) or noise_multiplier "
                             "(to fix it), or both (fixed noise, training stops at the budget)")
        if target_epsilon is not None and not (target_epsilon > 0 and math.isfinite(target_epsilon)):
            raise ValueError(f"target_epsilon must be a positive number, got {target_epsilon}")
        if noise_multiplier is not None and not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
            raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
        if target_epsilon is not None and noise_multiplier == 0:
            raise ValueError("noise_multiplier=0 gives no privacy (epsilon is infinite): drop target_epsilon or "
                             "add noise")
        if target_delta is not None and not 0 < target_delta < 1:
            raise ValueError(f"target_delta must lie in (0, 1), e.g. 1e-5; got {target_delta}")
        if not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive, got {max_grad_norm}")
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
        self.target_epsilon = target_epsilon
        self.target_delta = target_delta
        self.max_grad_norm = float(max_grad_norm)
        self.accountant_name = accountant
        self.noise_multiplier = noise_multiplier  # set by calibration when None
        self.history: list[tuple[float, float, int]] = []  # [(noise_multiplier, sample_rate, steps)]
        self.sample_rate: float | None = None
        self.dataset_size: int | None = None
        self.stopped_at_budget = False
        self._step_limit: int | None = None  # total steps allowed by the budget; None: no limit in sight
        self._hooks: Any = None
        self._optimizer: Any = None
        self._restore_loader: Any = None  # undoes the Poisson-sampling wrapper of the train loader

    # -- derived figures ---------------------------------------------------------------------------
    @property
    def delta(self) -> float | None:
        """The delta of the guarantee (known once the training set size is)."""
        if self.target_delta is not None:
            return self.target_delta
        return None if self.dataset_size is None else 1.0 / (10 * self.dataset_size)

    @property
    def steps(self) -> int:
        """Noisy optimizer steps taken so far."""
        return sum(n for _, _, n in self.history)

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far at :attr:`delta`; 0 before the first step, inf without noise."""
        if self.steps == 0:
            return 0.0
        if any(noise == 0 for noise, _, n in self.history if n):
            return math.inf
        return epsilon_spent(self.accountant_name, self.history, self.delta)

    def report(self) -> dict[str, Any]:
        """The figures a study report quotes; what :data:`PRIVACY_REPORT` holds."""
        opacus = _import_opacus()
        return {
            "epsilon": self.epsilon, "delta": self.delta, "accountant": self.accountant_name,
            "noise_multiplier": self.noise_multiplier, "max_grad_norm": self.max_grad_norm,
            "sample_rate": self.sample_rate, "dataset_size": self.dataset_size,
            "expected_batch_size": None if self.sample_rate is None else self.sample_rate * self.dataset_size,
            "steps": self.steps, "target_epsilon": self.target_epsilon, "stopped_at_budget": self.stopped_at_budget,
            "mechanism": "DP-SGD (Abadi et al. 2016): Poisson sampling, per-example clipping, Gaussian noise",
            "unit": "one training example", "opacus_version": opacus.__version__,
        }

    # -- Lightning hooks ---------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        _check_trainer(trainer, pl_module)
        bad = unsupported_layers(pl_module)
        if bad:
            raise ValueError(f"{type(pl_module).__name__} has layers that differential privacy cannot train: "
                             f"{', '.join(bad)}; replace BatchNorm by GroupNorm "
                             "(opacus.validators.ModuleValidator.fix)")
        self._poisson_sample_train_loader(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from opacus.data_loader import DPDataLoader
        from opacus.grad_sample import GradSampleHooks
        from opacus.optimizers import DPOptimizer

        loader = trainer.train_dataloader
        if not isinstance(loader, DPDataLoader):  # the accounting assumes Poisson sampling
            raise TypeError(f"the train loader is a {type(loader).__name__}, not Opacus' Poisson-sampled "
                             "DPDataLoader; train with one DataLoader from a data module or train_dataloader()")
        if len(trainer.optimizers) != 1:
            raise ValueError(f"DifferentialPrivacy supports one optimizer, {type(pl_module).__name__} has "
                             f"{len(trainer.optimizers)}")
        self.sample_rate, self.dataset_size = float(loader.sample_rate), len(loader.dataset)
        planned = trainer.estimated_stepping_batches - trainer.global_step
        if self.noise_multiplier is None:
            self.noise_multiplier = calibrate_noise(self.accountant_name, self.target_epsilon, self.delta,
                                                    self.sample_rate, planned)
        if self.target_epsilon is not None:
            further = steps_within_budget(self.accountant_name, self.history,
                                          (self.noise_multiplier, self.sample_rate), self.delta,
                                          self.target_epsilon, planned)
            self._step_limit = None if further is None else self.steps + further
        _warn_if_empty_batches_likely(self.sample_rate, self.dataset_size, planned)
        if trainer.gradient_clip_val:
            rank_zero_warn("trainer.gradient_clip_val has no effect under DifferentialPrivacy: gradients are "
                           f"clipped per example at max_grad_norm={self.max_grad_norm}")

        # The first layer's input needs no gradient, so torch warns at every step that its backward
        # hook sees only output gradients: expected with per-example gradient hooks, and silenced.
        warnings.filterwarnings("ignore", message=_HOOK_WARNING)
        self._hooks = GradSampleHooks(pl_module, batch_first=True, loss_reduction="mean")
        optimizer = DPOptimizer(trainer.optimizers[0], noise_multiplier=self.noise_multiplier,
                                max_grad_norm=self.max_grad_norm,
                                expected_batch_size=self.sample_rate * self.dataset_size, loss_reduction="mean")
        optimizer.attach_step_hook(self._count_step)
        self._optimizer = optimizer
        trainer.strategy.optimizers = [optimizer]  # the fit loop steps whatever the strategy holds
        self._stop_if_budget_spent(trainer)  # a resumed run may have no budget left for even one step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._stop_if_budget_spent(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("dp/epsilon", self.epsilon, on_step=False, on_epoch=True)
        pl_module.log("dp/delta", float(self.delta), on_step=False, on_epoch=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        folders = [run_dir] + ([run_dir / EXPORT_FOLDER] if hasattr(pl_module, "save_pretrained") else [])
        text = json.dumps(self.report(), indent=2)
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / PRIVACY_REPORT).write_text(text, encoding="utf-8")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self._hooks is not None:  # leave the module as it was: no hooks, no per-example gradients
            self._hooks.cleanup()
            self._hooks = None
        for p in pl_module.parameters():
            if hasattr(p, "summed_grad"):
                del p.summed_grad
        for sub in pl_module.modules():
            for attr in ("activations", "max_batch_len"):
                if attr in sub.__dict__:
                    delattr(sub, attr)
        if self._optimizer is not None and trainer.optimizers and trainer.optimizers[0] is self._optimizer:
            trainer.strategy.optimizers = [self._optimizer.original_optimizer]
        self._optimizer = None
        warnings.filters[:] = [f for f in warnings.filters if getattr(f[1], "pattern", None) != _HOOK_WARNING]
        if self._restore_loader is not None:
            self._restore_loader()
            self._restore_loader = None

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(h) for h in self.history], "noise_multiplier": self.noise_multiplier,
                "accountant": self.accountant_name}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("accountant", self.accountant_name) != self.accountant_name:
            raise ValueError(f"the checkpoint was accounted with {state_dict['accountant']!r}, "
                             f"this callback uses {self.accountant_name!r}: resume with the same accountant")
        self.history = [(float(a), float(b), int(c)) for a, b, c in state_dict.get("history", [])]
        if state_dict.get("noise_multiplier") is not None:
            self.noise_multiplier = float(state_dict["noise_multiplier"])

    # -- helpers -----------------------------------------------------------------------------------
    def _stop_if_budget_spent(self, trainer: L.Trainer) -> None:
        """Ask the fit loop to stop (checked before the next batch) when one more step would overspend."""
        if self._step_limit is None or self.steps < self._step_limit:
            return
        trainer.should_stop = True
        if not self.stopped_at_budget:
            self.stopped_at_budget = True
            rank_zero_warn(f"privacy budget reached: another step would take epsilon past target_epsilon="
                           f"{self.target_epsilon} (delta={self.delta:.3g}); training stops after "
                           f"{self.steps} DP steps")

    def _count_step(self, optimizer: Any) -> None:
        """DPOptimizer step hook: one more noisy step at this noise and sample rate."""
        entry = (float(optimizer.noise_multiplier), float(self.sample_rate))
        if self.history and self.history[-1][:2] == entry:
            self.history[-1] = (*entry, self.history[-1][2] + 1)
        else:
            self.history.append((*entry, 1))

    def _poisson_sample_train_loader(self, trainer: L.Trainer) -> None:
        """Make the fit loop's train loader Poisson-sampled (Opacus' ``DPDataLoader``), however it was
        given (data module, module hook or loader; see :func:`~lightning_medaug.compat.wrap_train_dataloader`);
        :meth:`on_train_start` verifies the result either way."""
        from opacus.data_loader import DPDataLoader
        from torch.utils.data import DataLoader

        def poisson_loader(loader: Any) -> DataLoader:
            if isinstance(loader, DPDataLoader):
                return loader
            if not isinstance(loader, DataLoader):
                raise TypeError(f"DifferentialPrivacy needs one torch DataLoader for training, got "
                                 f"{type(loader).__name__}")
            return DPDataLoader.from_data_loader(loader)

        self._restore_loader = wrap_train_dataloader(trainer, poisson_loader)


def _check_trainer(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """Raise ``ValueError`` for training set-ups the DP-SGD accounting does not cover."""
    if trainer.world_size > 1:
        raise ValueError(f"DifferentialPrivacy trains on one device, got {trainer.world_size} processes: "
                         "set trainer.devices=1 and num_nodes=1")
    if not pl_module.automatic_optimization:
        raise ValueError(f"DifferentialPrivacy needs automatic optimization; {type(pl_module).__name__} steps its "
                         "optimizers by hand (GANs): train a VAE-family generator instead")
    if trainer.accumulate_grad_batches != 1:
        raise ValueError(f"accumulate_grad_batches={trainer.accumulate_grad_batches} breaks the Poisson-sampling "
                         "accounting: set it to 1 and raise the data's batch_size instead")
    if str(trainer.precision) not in _PRECISIONS or getattr(trainer.precision_plugin, "scaler", None) is not None:
        raise ValueError(f"precision={trainer.precision!r} is not supported with DifferentialPrivacy (the fp16 loss "
                         "scaler would scale per-example gradients before clipping): use 32-true or bf16-mixed")


def _warn_if_empty_batches_likely(sample_rate: float, dataset_size: int, planned: float) -> None:
    """Poisson sampling draws an empty batch with probability ``(1 - q) ** N``, which the losses of
    this library cannot average (0 / 0); warn when that is likely to happen in the planned steps."""
    p_empty = (1.0 - sample_rate) ** dataset_size
    expected = p_empty * (planned if math.isfinite(planned) else 1e6)
    if expected > 1e-3:
        rank_zero_warn(f"with {dataset_size} training examples and sample rate {sample_rate:.3g}, Poisson sampling is "
                       f"expected to draw {expected:.2g} empty batches: raise the data's batch_size")


def load_privacy_report(folder: str | Path) -> dict[str, Any]:
    """Read the :data:`PRIVACY_REPORT` written beside a generator or in a run folder."""
    path = Path(folder) / PRIVACY_REPORT
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the model was not trained with DifferentialPrivacy, or pass "
                                "the run folder or its generator/ folder")
    return json.loads(path.read_text(encoding="utf-8"))
