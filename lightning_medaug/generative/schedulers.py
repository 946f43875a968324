"""One noise-schedule config -> the diffusers schedulers used to train and to sample.

The schedulers themselves are diffusers' (``add_noise``, ``set_timesteps``, ``step``); this module
only chooses their settings once, so training and every sampler agree on the betas and the
prediction type:

* training: ``DDPMScheduler`` (Ho et al. 2020, "Denoising Diffusion Probabilistic Models");
* ``"ddpm"``: ancestral sampling with the same scheduler on a strided time grid;
* ``"ddim"``: ``DDIMScheduler`` with eta = 0 (Song et al. 2021, "Denoising Diffusion Implicit Models");
* ``"dpmsolver++"``: ``DPMSolverMultistepScheduler``, second-order multistep DPM-Solver++
  (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models").

Settings chosen on purpose (see ``benchmarks/sample_speed.py`` and the tests for the checks):

* ``timestep_spacing="trailing"`` for every sampler: the first step is at t = T - 1, the step the
  pure-noise start actually corresponds to (Lin et al. 2024, "Common Diffusion Noise Schedules and
  Sample Steps are Flawed", Table 2).
* In pixel space (data known to lie in [-1, 1], ``clip_sample=True``) every sampler clips its
  estimate of x0 to [-1, 1]: DDPM/DDIM through ``clip_sample``, DPM-Solver++ through
  ``thresholding`` with ``sample_max_value=1`` (the dynamic threshold is then exactly 1). Without
  it, the cosine schedule makes DPM-Solver++ with epsilon prediction diverge: at t = T - 1,
  sqrt(alpha_bar) is 5e-5, so x0 = (x - sigma * eps) / alpha amplifies any error in eps 20,000 times.
  In latent space (``clip_sample=False``) the data has no known bound, so instead DPM-Solver++
  skips the last few training steps where log-SNR is below ``lambda_min_clipped`` and DDIM uses
  ``"leading"`` spacing with ``steps_offset=1`` (first step at t = T - T/steps + 1, e.g. 981,
  where sqrt(alpha_bar) is 0.03 instead of 5e-5 with the cosine schedule); ancestral DDPM
  sampling needs neither (its x0 estimate enters with a weight of order sqrt(alpha_bar)).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

__all__ = [
    "BETA_SCHEDULES", "PREDICTION_TYPES", "SAMPLERS", "NoiseSchedule", "build_sampler", "build_training_scheduler",
]

SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpmsolver++")
BETA_SCHEDULES: tuple[str, ...] = ("linear", "squaredcos_cap_v2")
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction")

#: log-SNR floor for DPM-Solver++ in latent space (diffusers' recommendation for the cosine schedule).
LATENT_LAMBDA_MIN = -5.1


@dataclass(frozen=True)
class NoiseSchedule:
    """The forward process shared by training and all samplers.

    Args:
        num_train_timesteps: number of discrete diffusion steps T.
        beta_schedule: ``"linear"`` (Ho et al. 2020) or ``"squaredcos_cap_v2"`` (cosine, Nichol &
            Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models").
        prediction_type: what the network predicts: ``"epsilon"`` (the noise) or
            ``"v_prediction"`` (Salimans & Ho 2022, "Progressive Distillation").
        clip_sample: whether the data lies in [-1, 1] (pixels), so samplers may clip x0 estimates.
    """

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"
    clip_sample: bool = True

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be at least 2, got {self.num_train_timesteps}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")

    def diffusers_config(self) -> dict[str, Any]:
        """The keyword arguments every diffusers scheduler here shares."""
        config = asdict(self)
        config.pop("clip_sample")
        return config


def build_training_scheduler(schedule: NoiseSchedule) -> DDPMScheduler:
    """The scheduler whose ``add_noise`` / ``get_velocity`` define the training targets."""
    return DDPMScheduler(**schedule.diffusers_config(), clip_sample=schedule.clip_sample)


def build_sampler(name: str, schedule: NoiseSchedule, **overrides: Any) -> SchedulerMixin:
    """A fresh sampler named ``name`` (one of :data:`SAMPLERS`) for ``schedule``.

    ``overrides`` replace single diffusers settings (for experiments); a fresh instance is
    returned every time because multistep samplers keep state between ``step`` calls.
    """
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")
    config = schedule.diffusers_config() | {"timestep_spacing": "trailing"}
    if name == "ddpm":
        config |= {"clip_sample": schedule.clip_sample}
        cls = DDPMScheduler
    elif name == "ddim":
        config |= {"clip_sample": schedule.clip_sample, "set_alpha_to_one": True}
        if not schedule.clip_sample:  # unbounded x0: start below t = T - 1 (see module docstring)
            config |= {"timestep_spacing": "leading", "steps_offset": 1}
        cls = DDIMScheduler
    else:
        config |= {
            "algorithm_type": "dpmsolver++",
            "solver_order": 2,
            "thresholding": schedule.clip_sample,
            "sample_max_value": 1.0,
            "lower_order_final": True,
            "final_sigmas_type": "zero",
            "lambda_min_clipped": -float("inf") if schedule.clip_sample else LATENT_LAMBDA_MIN,
        }
        cls = DPMSolverMultistepScheduler
    return cls(**(config | overrides))
