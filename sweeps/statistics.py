"""Statistics on score arrays: pure functions of numbers, no study, run or file in sight.

After Agarwal et al. 2021 ("Deep RL at the Edge of the Statistical Precipice", the rliable library): the
interquartile mean (IQM), 95% percentile-bootstrap CIs (plain, and stratified over datasets), the probability
of improvement P(X > Y) between two settings' scores by seed, and performance profiles. After Kurenkov &
Kolesnikov 2022 ("Showing Your Offline Reinforcement Learning Work: Online Evaluation Budget Matters", ICML):
the expected maximum of k settings tried online, drawn uniformly or taken in the order of an offline
criterion (Expected Online Performance). After Jackson et al. 2025 ("A Clean Slate for Offline Reinforcement
Learning", the Unifloral library's evaluation.py): a UCB bandit over trained policies that spends a budget of
online episodes, replayed from each policy's recorded episode returns, and the 95% bootstrap CI of its mean over
repeats. Also Spearman's rank correlation and the mean over members of the finite values. Every bootstrap draws
from a fixed seed, so a report is the same each time it is written.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

BOOTSTRAP_RESAMPLES = 9_999
BOOTSTRAP_SEED = 0
UCB_ALPHA = 2.0                 # Unifloral's evaluation.py defaults: run_bandit_trials(ucb_alpha=2.0, seed=17),
BANDIT_SEED = 17                # bootstrap_bandit_trials(n_bootstraps=1000)
BANDIT_BOOTSTRAP_RESAMPLES = 1_000


def iqm(values, axis: int = -1):
    """Interquartile mean: the mean of the middle half (a quarter trimmed at each end, as rliable does)."""
    return stats.trim_mean(values, 0.25, axis=axis)


def bootstrap_ci(values, statistic=np.mean) -> tuple[float, float]:
    """95% percentile-bootstrap CI of `statistic` over the finite `values`; nans when fewer than two."""
    values = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if len(values) < 2:
        return math.nan, math.nan
    result = stats.bootstrap((values,), statistic, n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                             vectorized=True, rng=np.random.default_rng(BOOTSTRAP_SEED))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def probability_of_improvement(x: dict[int, float], y: dict[int, float], mode: str = "max") -> dict:
    """P(X > Y), ties counting half, with its 95% bootstrap CI, for two settings' scores by seed. Paired
    over the shared seeds when at least two are shared (the seeds resampled as pairs); otherwise over
    all pairs of their seeds (rliable's probability_of_improvement; each setting resampled apart).
    `mode` "min": lower is better."""
    sign = 1.0 if mode == "max" else -1.0
    shared = sorted(set(x) & set(y))
    paired = len(shared) >= 2
    if paired:
        a, b = (sign * np.array([s[seed] for seed in shared]) for s in (x, y))

        def statistic(a, b, axis=-1):
            return np.mean((a > b) + 0.5 * (a == b), axis=axis)
    else:
        a, b = sign * np.array(list(x.values())), sign * np.array(list(y.values()))

        def statistic(a, b, axis=-1):
            a, b = np.moveaxis(a, axis, -1)[..., :, None], np.moveaxis(b, axis, -1)[..., None, :]
            return np.mean((a > b) + 0.5 * (a == b), axis=(-2, -1))
    value = float(statistic(a, b)) if len(a) and len(b) else math.nan
    low = high = math.nan
    if len(a) >= 2 and len(b) >= 2:
        result = stats.bootstrap((a, b), statistic, n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                                 paired=paired, vectorized=True, rng=np.random.default_rng(BOOTSTRAP_SEED))
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return {"p": value, "ci_low": low, "ci_high": high, "paired": paired,
            "seeds": shared if paired else sorted(set(x) | set(y))}


def stratified_bootstrap_ci(strata, statistic=iqm) -> tuple[float, float]:
    """95% percentile-bootstrap CI of `statistic` over the pooled values of several strata (datasets),
    resampling seeds within each stratum (rliable's StratifiedBootstrap); nans with under two values."""
    strata = [np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64) for values in strata]
    strata = [values for values in strata if len(values)]
    if sum(len(values) for values in strata) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    resampled = np.concatenate([values[rng.integers(0, len(values), (BOOTSTRAP_RESAMPLES, len(values)))]
                                for values in strata], axis=1)
    low, high = np.percentile(statistic(resampled, axis=-1), [2.5, 97.5])
    return float(low), float(high)


def probability_of_improvement_across(pairs: list[tuple[dict, dict]], mode: str = "max") -> dict:
    """P(X > Y) averaged over datasets, one `(x scores by seed, y scores by seed)` pair per dataset, each
    as in `probability_of_improvement` (paired over shared seeds where two or more are shared), with a
    95% CI from resampling seeds within each dataset."""
    sign = 1.0 if mode == "max" else -1.0
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    point, resampled = [], []
    for x, y in pairs:
        shared = sorted(set(x) & set(y))
        if len(shared) >= 2:
            a, b = (sign * np.array([s[seed] for seed in shared]) for s in (x, y))
            pick = rng.integers(0, len(a), (BOOTSTRAP_RESAMPLES, len(a)))
            point.append(np.mean((a > b) + 0.5 * (a == b)))
            resampled.append(np.mean((a[pick] > b[pick]) + 0.5 * (a[pick] == b[pick]), axis=-1))
        elif x and y:
            a, b = sign * np.array(list(x.values())), sign * np.array(list(y.values()))
            ra = a[rng.integers(0, len(a), (BOOTSTRAP_RESAMPLES, len(a)))][:, :, None]
            rb = b[rng.integers(0, len(b), (BOOTSTRAP_RESAMPLES, len(b)))][:, None, :]
            point.append(np.mean((a[:, None] > b[None]) + 0.5 * (a[:, None] == b[None])))
            resampled.append(np.mean((ra > rb) + 0.5 * (ra == rb), axis=(-2, -1)))
    if not point:
        return {"p": math.nan, "ci_low": math.nan, "ci_high": math.nan, "datasets": 0}
    low, high = np.percentile(np.mean(resampled, axis=0), [2.5, 97.5])
    return {"p": float(np.mean(point)), "ci_low": float(low), "ci_high": float(high), "datasets": len(point)}


def performance_profile(strata, taus) -> np.ndarray:
    """rliable's score distribution: for each threshold tau, the fraction of runs scoring above it, taken
    per stratum (dataset) and averaged over them so each dataset weighs the same. [len(taus)]"""
    taus = np.asarray(taus, dtype=np.float64)
    fractions = [np.mean(np.asarray(values, dtype=np.float64)[:, None] > taus[None], axis=0)
                 for values in strata if len(values)]
    return np.mean(fractions, axis=0) if fractions else np.full(len(taus), np.nan)


def expected_max_random(values, replacement: bool = True) -> np.ndarray:
    """Expected Online Performance of uniform selection (Kurenkov & Kolesnikov 2022): for k = 1..N, the
    expected maximum of k of the N `values` drawn uniformly, exactly, by order statistics over
    v_(1) <= ... <= v_(N). With `replacement` (the authors' eop.py, after Dodge et al. 2019's "Show Your
    Work"): sum_i v_(i) ((i / N)^k - ((i - 1) / N)^k), so even k = N may miss the best. Without: k distinct
    settings, sum_i v_(i) C(i - 1, k - 1) / C(N, k) (v_(i) is the maximum of the C(i - 1, k - 1) draws whose
    other k - 1 values rank below it), which reaches the best at k = N. [N]"""
    v = np.sort(np.asarray(values, dtype=np.float64))
    n = len(v)
    if replacement:
        below = np.arange(n + 1) / n
        return np.array([float(v @ (below[1:] ** k - below[:-1] ** k)) for k in range(1, n + 1)])
    return np.array([sum(v[i - 1] * (math.comb(i - 1, k - 1) / math.comb(n, k)) for i in range(k, n + 1))
                     for k in range(1, n + 1)])


def expected_max_top(values, criterion) -> np.ndarray:
    """Expected Online Performance of selection by an offline criterion: for k = 1..N, the maximum of
    `values` over the k settings of the highest `criterion` (nan: ranked last). Settings tied on the
    criterion enter in random order, exactly: over a tie, the expected maximum of the settings above it and a
    uniform draw from it. [N]"""
    values = np.asarray(values, dtype=np.float64)
    keyed = np.nan_to_num(np.asarray(criterion, dtype=np.float64), nan=-np.inf)
    curve, above = [], -np.inf
    for level in np.unique(keyed)[::-1]:
        tied = values[keyed == level]
        curve.extend(expected_max_random(np.maximum(above, tied), replacement=False))
        above = max(above, float(tied.max()))
    return np.array(curve)


def rank_correlation(x, y) -> tuple[float, int]:
    """Spearman's rho over the pairs where both values are finite, and their number; nan under three pairs or
    where either side is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    n = int(keep.sum())
    if n < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return math.nan, n
    return float(stats.spearmanr(x[keep], y[keep])[0]), n


def finite_mean(values: np.ndarray) -> np.ndarray:
    """The mean over members (axis 0) of the finite values; nan where there is none."""
    finite = np.isfinite(values)
    return np.where(finite.any(0), np.where(finite, values, 0.0).sum(0) / np.maximum(finite.sum(0), 1), np.nan)


def subsample_arms(arms: int, size: int, repeats: int, rng: np.random.Generator) -> np.ndarray:
    """[repeats, min(size, arms)]: per repeat, arm indices drawn without replacement, in random order (Unifloral's
    policy subsampling, `jax.random.choice(..., replace=False)` in run_bandit_trials)."""
    return np.argsort(rng.random((repeats, arms)), axis=1)[:, :min(size, arms)]


def top_arms(subsets: np.ndarray, criterion, k: int, rng: np.random.Generator) -> np.ndarray:
    """Each row of `subsets` [R, K] cut to its k arms of the highest `criterion` (one value per arm; nan ranks last),
    best first, arms tied on the criterion in random order. [R, min(k, K)]"""
    keyed = np.nan_to_num(np.asarray(criterion, dtype=np.float64)[subsets], nan=-np.inf)
    order = np.lexsort((rng.random(subsets.shape), -keyed), axis=-1)[:, :k]
    return np.take_along_axis(subsets, order, axis=1)


def bandit_deployments(returns: list, subsets: np.ndarray, pulls: int, rng: np.random.Generator, rule: str = "ucb",
                       alpha: float = UCB_ALPHA) -> np.ndarray:
    """The arm a bandit would deploy after each of `pulls` online episodes, in every repeat: [R, pulls] arm indices.

    `returns`: per arm, its recorded episode returns (1-D, any length >= 1); `subsets` [R, K]: the arms each repeat
    chooses among. A pull plays one episode of an arm, its return drawn uniformly with replacement from the arm's
    recorded ones. `rule` "ucb" is Unifloral's run_bandit (evaluation.py): with n_a the arm's pulls and t the pull's
    1-based number, it pulls the argmax of mean_a + sqrt(alpha log t / (n_a + 1e-9)) (an unpulled arm's mean 0;
    log 1 = 0, so the first pull is a uniform draw and every arm is then tried before any twice), ties broken
    uniformly at random. "round_robin": the row's arms in turn, one episode each. After each pull the deployed
    arm is the one of the highest empirical mean among those pulled, the first in the row on a tie (jnp.argmax's
    rule; Unifloral also counts an unpulled arm at mean 0, which deploys an untried policy whenever every tried one
    averages below 0, as raw Pendulum returns always do: here an untried policy is never deployed).
    Vectorized over repeats; one Python step per pull."""
    lengths = np.array([len(r) for r in returns])
    table = np.zeros((len(returns), int(lengths.max())))
    for arm, recorded in enumerate(returns):
        table[arm, :len(recorded)] = recorded
    repeats, width = subsets.shape
    rows = np.arange(repeats)
    counts, totals = np.zeros((repeats, width)), np.zeros((repeats, width))
    deployed = np.empty((repeats, pulls), dtype=np.int64)
    for t in range(1, pulls + 1):
        if rule == "ucb":
            index = totals / np.maximum(counts, 1) + np.sqrt(alpha * np.log(t) / (counts + 1e-9))
            tied = index == index.max(axis=1, keepdims=True)
            nth = np.floor(rng.random(repeats) * tied.sum(axis=1))
            arm = np.argmax(np.cumsum(tied, axis=1) > nth[:, None], axis=1)
        elif rule == "round_robin":
            arm = np.full(repeats, (t - 1) % width)
        else:
            raise ValueError(f"rule={rule!r}: choose ucb or round_robin")
        chosen = subsets[rows, arm]
        counts[rows, arm] += 1
        totals[rows, arm] += table[chosen, np.floor(rng.random(repeats) * lengths[chosen]).astype(np.int64)]
        means = np.where(counts > 0, totals / np.maximum(counts, 1), -np.inf)
        deployed[:, t - 1] = subsets[rows, np.argmax(means, axis=1)]
    return deployed


def bootstrap_mean_columns(samples, resamples: int = BANDIT_BOOTSTRAP_RESAMPLES,
                           seed: int = BANDIT_SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of `samples` [R, T] (repeats x budgets): the mean over the R rows and its 95% percentile-bootstrap
    CI, the rows resampled with replacement (Unifloral's bootstrap_confidence_interval). One set of resamples
    serves every column (Unifloral draws a fresh set per budget: the same CI of each column, a smoother band).
    ([T], [T], [T])"""
    samples = np.asarray(samples, dtype=np.float64)
    repeats = len(samples)
    weights = np.random.default_rng(seed).multinomial(repeats, np.full(repeats, 1.0 / repeats), size=resamples)
    low, high = np.percentile(weights @ samples / repeats, [2.5, 97.5], axis=0)
    return samples.mean(axis=0), low, high
