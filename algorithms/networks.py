"""Networks with a leading member axis: P independent learners packed into one set of tensors.

Every weight is `[P, in, out]` and every activation `[P, B, features]`, so one batched matmul
(`torch.baddbmm`) runs all P members, and the sum of their losses backpropagates into P independent
parameter sets. An ensemble inside a member (twin critics, dynamics models) is the same mechanism with
more members: a twin critic for P learners is a PackedMLP with 2P members.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class PackedLinear(nn.Module):
    """`y[p] = x[p] @ W[p] + b[p]` for every member p; x is `[P, B, in]`."""

    def __init__(self, members: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(members, 1, out_features))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generators: list[torch.Generator] | None = None) -> None:
        """nn.Linear's default initialization; with generators, slice i draws from `generators[i]`."""
        bound = 1.0 / math.sqrt(self.weight.shape[1])
        if generators is None:
            self.weight.uniform_(-bound, bound)
            self.bias.uniform_(-bound, bound)
            return
        for i, generator in enumerate(generators):
            self.weight[i].uniform_(-bound, bound, generator=generator)
            self.bias[i].uniform_(-bound, bound, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class PackedMLP(nn.Module):
    """An MLP per member: `[P, B, in] -> [P, B, out]`, ReLU (or any activation) between layers."""

    def __init__(self, members: int, in_features: int, out_features: int, hidden: Sequence[int],
                 activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        sizes = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(PackedLinear(members, n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(activation())
        self.layers = nn.Sequential(*layers)
        self.members = members

    def forward(self, x: torch.Tensor, hidden_dtype: torch.dtype | None = None) -> torch.Tensor:
        """With `hidden_dtype` (e.g. torch.bfloat16) the hidden layers' matmuls run in that precision under
        autocast while the output layer and the result stay float32: the cheap last layer then sums the hidden
        units' rounding errors in full precision instead of rounding the output itself."""
        if hidden_dtype is None:
            return self.layers(x)
        *hidden, output = self.layers
        with torch.autocast(x.device.type, dtype=hidden_dtype):
            for layer in hidden:
                x = layer(x)
        return output(x.float())


class TanhGaussianPolicy(nn.Module):
    """SAC's squashed Gaussian: a = scale * tanh(u) + bias, u ~ N(mu(s), sigma(s)).

    `action_low`/`action_high` are the env's bounds; the network works in [-1, 1].
    """

    def __init__(self, members: int, obs_dim: int, act_dim: int, hidden: Sequence[int],
                 action_low: torch.Tensor | float = -1.0, action_high: torch.Tensor | float = 1.0):
        super().__init__()
        self.net = PackedMLP(members, obs_dim, 2 * act_dim, hidden)
        low = torch.as_tensor(action_low, dtype=torch.float32).expand(act_dim)
        high = torch.as_tensor(action_high, dtype=torch.float32).expand(act_dim)
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    def distribution(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_std = self.net(obs).chunk(2, dim=-1)
        return mu, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterized action `[P, B, act]` and its log-probability `[P, B]` (tanh-corrected).

        `noise` (standard normal) lets the caller own the randomness; shaped `[P, B, N, act]`, it draws
        N actions per state from one pass of the network (`[P, B, N, act]` and `[P, B, N]`).
        """
        mu, log_std = self.distribution(obs)
        if noise is not None and noise.dim() > mu.dim():
            mu, log_std = mu.unsqueeze(-2), log_std.unsqueeze(-2)
        u = mu + log_std.exp() * (torch.randn_like(mu) if noise is None else noise)
        return self.squash(u), squashed_gaussian_log_prob(u, mu, log_std, self.action_scale)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log pi(a|s) `[P, B]` of given actions (e.g. the dataset's), clipped just inside the bounds."""
        mu, log_std = self.distribution(obs)
        squashed = ((actions - self.action_bias) / self.action_scale).clamp(-1 + 1e-6, 1 - 1e-6)
        return squashed_gaussian_log_prob(torch.atanh(squashed), mu, log_std, self.action_scale)

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return self.squash(self.distribution(obs)[0])

    def squash(self, u: torch.Tensor) -> torch.Tensor:
        return torch.tanh(u) * self.action_scale + self.action_bias


class GaussianPolicy(nn.Module):
    """The Gaussian policy of IQL/AWAC/BC: mean = scale * tanh(net(s)) + bias, a learned
    state-independent log-std per member; log-probabilities of in-bound actions need no tanh correction."""

    def __init__(self, members: int, obs_dim: int, act_dim: int, hidden: Sequence[int],
                 action_low: torch.Tensor | float = -1.0, action_high: torch.Tensor | float = 1.0):
        super().__init__()
        self.net = PackedMLP(members, obs_dim, act_dim, hidden)
        self.log_std = nn.Parameter(torch.zeros(members, 1, act_dim))
        low = torch.as_tensor(action_low, dtype=torch.float32).expand(act_dim)
        high = torch.as_tensor(action_high, dtype=torch.float32).expand(act_dim)
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs)) * self.action_scale + self.action_bias

    def sample(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """mu(s) + sigma * noise, clipped to the action bounds: `[P, B, act]`."""
        std = self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()
        low, high = self.action_bias - self.action_scale, self.action_bias + self.action_scale
        return torch.maximum(torch.minimum(self.deterministic(obs) + std * noise, high), low)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log N(a; mu(s), sigma) summed over action dimensions: `[P, B]`."""
        mu = self.deterministic(obs)
        log_std = self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        return (-0.5 * ((actions - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def squashed_gaussian_log_prob(u: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor,
                               action_scale: torch.Tensor) -> torch.Tensor:
    """log pi(a) for a = scale * tanh(u): Gaussian log-density minus log|da/du| (SAC, appendix C).

    Uses log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), which stays finite for large |u|.
    """
    gaussian = (-0.5 * ((u - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_det = (2 * (math.log(2) - u - F.softplus(-2 * u)) + action_scale.log()).sum(-1)
    return gaussian - log_det


class PackedCritic(nn.Module):
    """`ensemble` Q-functions per member (2 for SAC's twin critics): `Q(s, a) -> [P, E, B]`."""

    def __init__(self, members: int, obs_dim: int, act_dim: int, hidden: Sequence[int], ensemble: int = 2):
        super().__init__()
        self.members, self.ensemble = members, ensemble
        self.net = PackedMLP(members * ensemble, obs_dim + act_dim, 1, hidden)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, hidden_dtype: torch.dtype | None = None) -> torch.Tensor:
        P, E = self.members, self.ensemble
        x = torch.cat([obs, actions], dim=-1)                    # [P, B, obs+act]
        x = x.unsqueeze(1).expand(P, E, *x.shape[1:]).reshape(P * E, *x.shape[1:])
        return self.net(x, hidden_dtype).view(P, E, -1)


def q_at_samples(critic: PackedCritic, observations: torch.Tensor, actions: torch.Tensor,
                 hidden_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Q of each critic for N actions per state: `[P, B, obs]` and `[P, B, N, act]` -> `[P, E, B, N]`."""
    P, B, N, act_dim = actions.shape
    repeated = observations.unsqueeze(2).expand(P, B, N, observations.shape[-1]).reshape(P, B * N, -1)
    return critic(repeated, actions.reshape(P, B * N, act_dim), hidden_dtype).view(P, critic.ensemble, B, N)


SAMPLED_Q_PRECISIONS = ("auto", "bfloat16", "float32")


def has_native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 matrices in hardware: CUDA GPUs from Ampere on, CPUs with
    AVX512-BF16 or AMX-BF16. Elsewhere bfloat16 matmuls are emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return False


def sampled_q_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The hidden-layer dtype for scoring many sampled actions (`PackedMLP.forward`): bfloat16 or None (float32).

    "auto" picks bfloat16 where the device has it natively. Measured on a default CQL critic: the bfloat16 error
    in the regularizer's gradient is about 3% of its norm, against 27% between two draws of the sampled actions.
    """
    if precision == "float32" or (precision == "auto" and not has_native_bf16(device)):
        return None
    return torch.bfloat16


def init_members(module: nn.Module, generators: list[torch.Generator]) -> None:
    """Re-initialize every PackedLinear in `module` so that member p's weights come from `generators[p]`
    alone: a packed member then starts exactly like a solo learner seeded the same way. A layer with
    E members per learner (an ensemble) gives learner p's E slices to generator p, in order."""
    for layer in module.modules():
        if isinstance(layer, PackedLinear):
            per_learner = layer.weight.shape[0] // len(generators)
            layer.reset_parameters([g for g in generators for _ in range(per_learner)])


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, parameter by parameter."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)
