"""Privacy accounting for DP-SGD with Opacus' accountants: epsilon spent, steps left in a budget,
noise calibrated to a budget (used by :class:`~lightning_medaug.generative.privacy.DifferentialPrivacy`).

A history is Opacus' list of ``(noise_multiplier, sample_rate, steps)`` entries; ``accountant`` is
``"rdp"`` (Mironov 2017) or ``"prv"`` (Gopi et al. 2021).
"""

from __future__ import annotations

import math
import warnings

__all__ = ["calibrate_noise", "epsilon_spent", "steps_within_budget"]


def epsilon_spent(accountant: str, history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon spent by the steps in ``history`` ([(noise_multiplier, sample_rate, steps)])."""
    from opacus.accountants import create_accountant

    if not history:
        return 0.0
    acc = create_accountant(mechanism=accountant)
    acc.history = list(history)
    with warnings.catch_warnings():  # RDP's "optimal order is the largest alpha": a looser bound, still valid
        warnings.filterwarnings("ignore", message="Optimal order")
        return float(acc.get_epsilon(delta=delta))


def steps_within_budget(accountant: str, history: list, step: tuple[float, float], delta: float,
                        budget: float, planned: float) -> int | None:
    """The most further steps of ``step=(noise, rate)`` that keep epsilon within ``budget``;
    ``None`` when all ``planned`` steps fit. Epsilon grows with steps, so a doubling then a
    bisection search needs about ``2 log2(planned)`` accountant calls."""
    def fits(k: int) -> bool:
        return epsilon_spent(accountant, history + [(*step, k)], delta) <= budget

    if math.isfinite(planned) and fits(int(planned)):
        return None
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while fits(hi):  # stops: epsilon grows without bound in the number of steps
        lo, hi = hi, hi * 2
        if hi >= planned:
            hi = int(planned)
            break
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def calibrate_noise(accountant: str, target_epsilon: float, delta: float, sample_rate: float, planned: float) -> float:
    """The smallest noise (within 0.01 in epsilon) that keeps ``planned`` steps within the budget."""
    from opacus.accountants.utils import get_noise_multiplier

    if not math.isfinite(planned) or planned < 1:
        raise ValueError("target_epsilon calibrates the noise to the planned number of steps: set "
                         "trainer.max_steps or trainer.max_epochs (or pass noise_multiplier instead)")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order")
            return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                              sample_rate=sample_rate, steps=int(planned), accountant=accountant))
    except ValueError as err:
        raise ValueError(f"target_epsilon={target_epsilon} cannot be met in {int(planned)} steps at "
                         f"sample rate {sample_rate:.3g} ({err}); raise target_epsilon or train fewer steps") from err
