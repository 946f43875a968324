"""The learned Riemannian latent metric of the RHVAE and the Hamiltonian dynamics that use it.

* Metric (Chadebec, Mantoux & Allassonniere, "Geometry-Aware Hamiltonian Variational
  Auto-Encoder", 2020, eq. 9): ``G^-1(z) = sum_i L_i L_i^T exp(-||z - c_i||^2 / T^2) + lambda I``
  with centroids ``c_i`` (training latents) and lower-triangular ``L_i`` from a metric network.
* Generalized leapfrog (Girolami & Calderhead, "Riemann manifold Langevin and Hamiltonian Monte
  Carlo methods", JRSS-B 2011, eq. 16-18) for ``H(z, rho) = U(z) + 1/2 log det G(z)
  + 1/2 rho^T G^-1(z) rho``, with the quadratic tempering of Caterini et al. ("Hamiltonian
  Variational Auto-Encoder", NeurIPS 2018).
* Sampling (Chadebec, Thibeau-Sutre, Burgos & Allassonniere, "Data Augmentation in High
  Dimensional Low Sample Size Setting Using a Geometry-Based Variational Autoencoder", TPAMI 2022):
  HMC on the Riemannian uniform distribution, density ``sqrt(det G^-1(z))``, which is high where
  the training latents are and flat (``lambda^(d/2)``) far from them.

:class:`CentroidBank` keeps at most ``max_centroids`` centroids (a uniform random subset of each
epoch's latents, split evenly between classes), so memory does not grow with the data set.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["CentroidBank", "generalized_leapfrog", "hmc", "inverse_metric", "log_det", "lower_triangular",
           "tempering", "value_and_grad"]


def lower_triangular(raw: Tensor, dim: int) -> Tensor:
    """``(n, dim + dim(dim-1)/2)`` network outputs -> lower-triangular ``(n, dim, dim)`` factors.

    The first ``dim`` values are log-diagonals (exp keeps the diagonal positive, so every
    ``L L^T`` is positive definite); the rest fill the strictly lower part row by row.
    """
    rows, cols = torch.tril_indices(dim, dim, offset=-1, device=raw.device)
    strictly_lower = raw.new_zeros(raw.shape[0], dim, dim)
    strictly_lower[:, rows, cols] = raw[:, dim:]
    return strictly_lower + torch.diag_embed(raw[:, :dim].exp())


def tempering(k: int, num_steps: int, beta_zero: float) -> float:
    """``sqrt(beta_k)`` of the quadratic schedule (Caterini et al. 2018), from ``sqrt(beta_zero)`` to 1."""
    inv_sqrt_beta0 = 1.0 / beta_zero**0.5
    return 1.0 / ((1.0 - inv_sqrt_beta0) * (k / num_steps) ** 2 + inv_sqrt_beta0)


def inverse_metric(z: Tensor, z_labels: Tensor, centroids: Tensor, matrices: Tensor, centroid_labels: Tensor,
                   temperature: float, regularization: float) -> Tensor:
    """``G^-1(z)`` of shape ``(n, d, d)``; only centroids of the query's class contribute.

    ``matrices`` are ``L_i L_i^T``; centroids labelled -1 (empty slots) never match a class.
    """
    # |z|^2 + |c|^2 - 2 z.c: a matmul instead of an (n, K, d) difference tensor; twice differentiable,
    # unlike cdist, which training needs (it backpropagates through dH/dz)
    sq_dist = (z.pow(2).sum(-1, keepdim=True) + centroids.pow(2).sum(-1) - 2.0 * z @ centroids.T).clamp_min(0.0)
    same_class = (z_labels.unsqueeze(1) == centroid_labels.unsqueeze(0)).to(z.dtype)
    weights = torch.exp(-sq_dist / temperature**2) * same_class
    eye = torch.eye(z.shape[-1], device=z.device, dtype=z.dtype)
    return torch.einsum("nk,kij->nij", weights, matrices) + regularization * eye


def log_det(spd: Tensor) -> Tensor:
    """``log det`` of symmetric positive definite matrices through Cholesky (stable, twice differentiable)."""
    return 2.0 * torch.linalg.cholesky(spd).diagonal(dim1=-2, dim2=-1).log().sum(-1)


def _grad(output: Tensor, z: Tensor, create_graph: bool) -> Tensor:
    return torch.autograd.grad(output.sum(), z, create_graph=create_graph)[0]


def _tracked(z: Tensor) -> Tensor:
    # Outside training z carries no graph; gradients w.r.t. z still need it to be a graph leaf.
    return z if z.requires_grad else z.detach().requires_grad_(True)


def generalized_leapfrog(z: Tensor, rho: Tensor, grad_u: Tensor,
                         potential_grad: Callable[[Tensor], tuple[Tensor, Tensor]],
                         metric: Callable[[Tensor], Tensor], eps: float, fixed_point_steps: int,
                         create_graph: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One generalized leapfrog step (Girolami & Calderhead 2011, eq. 16-18).

    Args:
        z, rho: position and momentum, ``(n, d)``.
        grad_u: ``dU/dz`` at ``z`` (from the previous step, so the decoder runs once per step).
        potential_grad: ``z -> (dU/dz, aux)``; ``aux`` (the reconstruction) is passed through.
        metric: ``z -> G^-1(z)``.
        eps: step size.
        fixed_point_steps: iterations solving the two implicit updates.
        create_graph: keep the graph of every gradient (training backpropagates through the flow).

    Returns:
        ``z'``, ``rho'``, ``dU/dz'`` and the ``aux`` of ``z'``.
    """
    def metric_force(z_: Tensor, rho_: Tensor) -> Tensor:
        # d/dz of 1/2 log det G + 1/2 rho^T G^-1 rho, with log det G = -log det G^-1
        z_ = _tracked(z_)
        ginv = metric(z_)
        kinetic = 0.5 * torch.einsum("ni,nij,nj->n", rho_, ginv, rho_)
        return _grad(kinetic - 0.5 * log_det(ginv), z_, create_graph)

    rho_half = rho
    for _ in range(fixed_point_steps):  # implicit in rho: rho_half = rho - eps/2 dH/dz(z, rho_half)
        rho_half = rho - 0.5 * eps * (grad_u + metric_force(z, rho_half))
    velocity = torch.einsum("nij,nj->ni", metric(z), rho_half)
    z_new = z + eps * velocity
    for _ in range(fixed_point_steps - 1):  # implicit in z: average of G^-1 rho at both ends
        z_new = z + 0.5 * eps * (velocity + torch.einsum("nij,nj->ni", metric(z_new), rho_half))
    grad_u_new, aux = potential_grad(z_new)
    rho_new = rho_half - 0.5 * eps * (grad_u_new + metric_force(z_new, rho_half))
    return z_new, rho_new, grad_u_new, aux


def value_and_grad(log_density: Callable[[Tensor], Tensor]) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """``z -> (log_density(z), d log_density / dz)`` through autograd, for densities without a
    closed-form gradient (``CentroidBank.log_volume_and_grad_fn`` has one)."""
    def fn(z: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            z_ = z.detach().requires_grad_(True)
            value = log_density(z_)
            return value.detach(), _grad(value, z_, create_graph=False)

    return fn


def hmc(z: Tensor, log_density_and_grad: Callable[[Tensor], tuple[Tensor, Tensor]], num_leapfrog: int, eps: float,
        momenta: Tensor, uniforms: Tensor) -> Tensor:
    """Hamiltonian Monte Carlo (Duane et al. 1987; Neal 2011) with Metropolis correction, per chain.

    Args:
        z: starting points ``(n, d)``.
        log_density_and_grad: ``z -> (log density (n,), its gradient (n, d))``; see :func:`value_and_grad`.
            It runs once per leapfrog step: the energies reuse the values at the leapfrog's end points.
        num_leapfrog, eps: leapfrog steps per iteration and their size.
        momenta, uniforms: ``(num_steps, n, d)`` standard normal momenta and ``(num_steps, n)``
            acceptance uniforms in [0, 1), one row per iteration. Drawn up front by the caller, so a
            seeded generator fixes the chain and a GPU chain never waits for a host-to-device copy.
    """
    z = z.detach()
    log_p, grad = log_density_and_grad(z)
    for rho, uniform in zip(momenta, uniforms):
        h0 = -log_p + 0.5 * rho.pow(2).sum(-1)
        z_new, rho_new = z, torch.add(rho, grad, alpha=0.5 * eps)
        for k in range(num_leapfrog):
            z_new = torch.add(z_new, rho_new, alpha=eps)
            log_p_new, grad_new = log_density_and_grad(z_new)
            step = eps if k < num_leapfrog - 1 else 0.5 * eps  # the last momentum update is a half step
            rho_new = torch.add(rho_new, grad_new, alpha=step)
        h1 = -log_p_new + 0.5 * rho_new.pow(2).sum(-1)
        # NaN energies compare False, so a diverged proposal is rejected.
        accept = uniform.log() < (h0 - h1)
        z = torch.where(accept.unsqueeze(-1), z_new, z)
        log_p = torch.where(accept, log_p_new, log_p)
        grad = torch.where(accept.unsqueeze(-1), grad_new, grad)
    return z


class CentroidBank(nn.Module):
    """Centroids ``c_i``, metric matrices ``L_i L_i^T`` and class labels of the RHVAE metric.

    During an epoch :meth:`add` keeps a uniform random subset (bottom-k of random keys, i.e.
    reservoir sampling) of the latents seen, at most ``max_centroids // max(num_classes, 1)`` per
    class; :meth:`commit` at the epoch's end makes it the metric used by evaluation and sampling.
    Committed tensors are persistent buffers of fixed shape (saved with the model); empty slots
    carry label -1.
    """

    def __init__(self, latent_dim: int, max_centroids: int, num_classes: int, temperature: float,
                 regularization: float):
        super().__init__()
        self.latent_dim, self.temperature, self.regularization = latent_dim, temperature, regularization
        self.num_groups = max(num_classes, 1)
        self.per_class = max_centroids // self.num_groups
        size = self.per_class * self.num_groups
        self.register_buffer("centroids", torch.zeros(size, latent_dim))
        self.register_buffer("matrices", torch.zeros(size, latent_dim, latent_dim))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        # the epoch being collected: not saved, a resumed run starts a fresh reservoir
        self.register_buffer("_next_centroids", torch.zeros(size, latent_dim), persistent=False)
        self.register_buffer("_next_matrices", torch.zeros(size, latent_dim, latent_dim), persistent=False)
        self.register_buffer("_next_labels", torch.full((size,), -1, dtype=torch.long), persistent=False)
        self.register_buffer("_next_keys", torch.full((size,), float("inf")), persistent=False)

    def __len__(self) -> int:
        """Number of committed centroids."""
        return int((self.labels >= 0).sum())

    @torch.no_grad()
    def add(self, centroids: Tensor, factors: Tensor, labels: Tensor) -> None:
        """Offer a batch of latents, lower-triangular factors ``L`` and labels to this epoch's reservoir."""
        centroids, factors = centroids.detach().float(), factors.detach().float()
        matrices = factors @ factors.transpose(-1, -2)
        keys = torch.rand(labels.shape[0], device=centroids.device)
        for group in range(self.num_groups):
            new = labels == group
            if not new.any():
                continue
            slots = slice(group * self.per_class, (group + 1) * self.per_class)
            all_keys = torch.cat([self._next_keys[slots], keys[new]])
            keep = all_keys.topk(self.per_class, largest=False).indices
            self._next_keys[slots] = all_keys[keep]
            self._next_centroids[slots] = torch.cat([self._next_centroids[slots], centroids[new]])[keep]
            self._next_matrices[slots] = torch.cat([self._next_matrices[slots], matrices[new]])[keep]
            kept_labels = torch.cat([self._next_labels[slots], labels[new]])[keep]
            self._next_labels[slots] = torch.where(self._next_keys[slots].isinf(), -1, kept_labels)

    @torch.no_grad()
    def commit(self) -> bool:
        """Make this epoch's reservoir the metric and start a new one; False when nothing was added."""
        if not (self._next_labels >= 0).any():
            return False
        self.centroids.copy_(self._next_centroids)
        self.matrices.copy_(self._next_matrices)
        self.labels.copy_(self._next_labels)
        self._next_labels.fill_(-1)
        self._next_keys.fill_(float("inf"))
        return True

    def inverse_metric(self, z: Tensor, labels: Tensor) -> Tensor:
        """``G^-1(z)`` from the committed centroids of each query's class."""
        return inverse_metric(z, labels, self.centroids.to(z.dtype), self.matrices.to(z.dtype), self.labels,
                              self.temperature, self.regularization)

    def log_volume_and_grad_fn(self, labels: Tensor) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        """``z -> (log sqrt(det G^-1(z)), its gradient)`` for chains of classes ``labels``: the
        unnormalised log density of the Riemannian uniform distribution (TPAMI 2022), for :func:`hmc`.

        The gradient is in closed form, ``d/dz 1/2 log det G^-1 = 1/2 sum_k tr(G M_k) dw_k/dz`` with
        ``dw_k/dz = -2 w_k (z - c_k) / T^2``: no autograd graph, and what does not depend on ``z``
        (empty slots dropped, class masks, centroid norms) is computed once, up front, since HMC
        evaluates this thousands of times. No kernel here waits on the host, so on a GPU the chain's
        launches queue ahead of its compute.
        """
        used = (self.labels.unsqueeze(1) == labels.unique().unsqueeze(0)).any(1)
        # float32 whatever the module's dtype: the chains run in float32 (Cholesky needs it)
        centroids = self.centroids[used].float()
        flat_matrices = self.matrices[used].float().flatten(1)  # (K, d*d): tr(G M_k) is a matmul (both symmetric)
        inv_t2 = 1.0 / self.temperature**2
        # inverse_metric's weights with what does not depend on z hoisted: the log of the class mask
        # (0 or -inf) and -|c|^2, folded into the exponent
        log_mask = torch.zeros(len(labels), len(centroids), device=centroids.device).masked_fill(
            labels.unsqueeze(1) != self.labels[used].unsqueeze(0), float("-inf"))
        neg_c2 = -centroids.pow(2).sum(-1)
        eye = torch.eye(self.latent_dim, device=centroids.device)
        regularizer = self.regularization * eye

        def log_volume_and_grad(z: Tensor) -> tuple[Tensor, Tensor]:
            # -||z - c||^2 = 2 z.c - |c|^2 - |z|^2, at most 0
            neg_sq_dist = (torch.addmm(neg_c2, z, centroids.T, alpha=2.0) - z.pow(2).sum(-1, keepdim=True)).clamp_max(0)
            weights = torch.exp(torch.add(log_mask, neg_sq_dist, alpha=inv_t2))
            ginv = torch.addmm(regularizer.flatten(), weights, flat_matrices).view(-1, *eye.shape)
            # cholesky_ex and solve_triangular check no errors, which would wait for the device; a failed
            # factorisation gives NaN energies, and HMC rejects those proposals
            chol = torch.linalg.cholesky_ex(ginv).L
            log_volume = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
            chol_inv = torch.linalg.solve_triangular(chol, eye, upper=False)  # G = L^-T L^-1
            coeffs = (chol_inv.mT @ chol_inv).flatten(1) @ flat_matrices.T * weights  # tr(G M_k) w_k
            grad = torch.addmm(coeffs.sum(-1, keepdim=True) * z, coeffs, centroids, beta=-inv_t2, alpha=inv_t2)
            return log_volume, grad

        return log_volume_and_grad

    def starting_points(self, labels: Tensor, randn: Tensor, uniform: Tensor) -> Tensor:
        """A random committed centroid of each label's class; ``randn`` where a class has none yet.

        ``uniform`` (n,) in [0, 1) picks the centroid, so the caller's generator fixes the choice.
        """
        members = (labels.unsqueeze(1) == self.labels.unsqueeze(0)).float()  # (n, K)
        counts = members.sum(1)
        # index of the (floor(u * count) + 1)-th member: first position where the running count reaches it
        target = (uniform * counts).floor() + 1
        index = (members.cumsum(1) >= target.unsqueeze(1)).float().argmax(1)
        return torch.where((counts > 0).unsqueeze(1), self.centroids[index].to(randn.dtype), randn)
