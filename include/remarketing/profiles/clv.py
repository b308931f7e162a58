"""Purchase model: BG/NBD fitted per market, giving P(alive) and expected purchases ahead.

Why: recency alone cannot tell a customer who buys twice a year and is due from one who has
left. The BG/NBD model (Fader, Hardie & Lee 2005, "Counting your customers the easy way") reads
each buyer's history as (x, t_x, T): x repeat purchases, the last at t_x days after the first, T
days observed since the first. Purchases follow a Poisson process (rate ~ Gamma(r, alpha)); after
every repeat purchase the customer leaves with probability p ~ Beta(a, b).

- Fit: maximum likelihood per market (scipy SLSQP within bounds on log-parameters, analytic gradient; the
  x-only terms are computed once per distinct x). Large markets are fitted on a deterministic
  sample of ``fit_sample`` buyers (chosen by a hash of customer_id, so row order never matters);
  at 100k buyers the sampling error of four parameters is far below their meaning.
- A market with fewer than ``min_repeat_buyers`` repeat buyers, or whose fit does not converge,
  uses the parameters fitted on all markets pooled, and the reason is recorded.
- P(alive | x, t_x, T) is the closed form of the paper.
- Expected purchases in the next t days = P(alive) x E_p[(1 - ((alpha+T)/(alpha+T+p t))^(r+x)) / p]
  with p ~ Beta(a, b+x): Gauss-Jacobi quadrature in p. It equals the paper's hypergeometric
  formula (eq. 10; ``expected_purchases_closed_form``) where that is well conditioned, and stays
  finite where 2F1 with z -> 1 and large x loses precision or a ~ 1 divides by zero.
- Purchases are *purchase days*: a customer's valid orders on one UTC calendar day count once
  (split shipments and a forgotten item are not two decisions to buy).

The held-out check of these fits (``calibration_report``) is remarketing.profiles.calibration.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy.linalg import eigh_tridiagonal
from scipy.optimize import minimize
from scipy.special import digamma, expit, gammaln, hyp2f1

DAY_US = 86_400 * 1_000_000
QUADRATURE_NODES = 24  # worst relative error ~2e-4 against 128 nodes over wide parameter ranges
_LOG_BOUNDS = (-12.0, 12.0)  # on log-parameters: e^-12 .. e^12 (alpha in days)


# ---------------------------------------------------------------------------------------------
# sampling


def _hash_rank(customer_id: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random uint64 per customer id (splitmix64): samples that ignore row order."""
    z = customer_id.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


# ---------------------------------------------------------------------------------------------
# purchase history


@dataclass(frozen=True)
class PurchaseHistory:
    """Per customer (positions 0..n-1): purchase days and their timing, from sorted valid orders.

    ``order_*`` arrays are the valid orders sorted by (customer, time); ``starts`` marks each
    customer's first order in that order; times are int64 UTC microseconds.
    """

    order_customer: np.ndarray
    order_time: np.ndarray
    order_index: np.ndarray  # position of each sorted order in the caller's arrays
    purchase_days: np.ndarray  # per customer; 0 for customers without valid orders
    first_at: np.ndarray  # first order (INT64 min when none)
    last_at: np.ndarray  # last order
    last_purchase_day_at: np.ndarray  # first order of the last purchase day
    gaps_days: np.ndarray  # days between consecutive purchase days of one customer
    gap_customer: np.ndarray  # whose gap it is

    def model_inputs(self, as_of_us: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, t_x, T) in days for every customer (meaningful only where purchase_days > 0)."""
        x = np.maximum(self.purchase_days - 1, 0).astype(np.float64)
        t_x = (self.last_purchase_day_at - self.first_at) / DAY_US
        T = (as_of_us - self.first_at) / DAY_US
        buyers = self.purchase_days > 0
        return x, np.where(buyers, t_x, 0.0), np.where(buyers, T, 0.0)


def purchase_history(customer_pos: np.ndarray, placed_us: np.ndarray, n_customers: int) -> PurchaseHistory:
    """Sort valid orders by customer and time once, and derive purchase days and inter-purchase gaps."""
    customer_pos = np.asarray(customer_pos, dtype=np.int64)
    placed_us = np.asarray(placed_us, dtype=np.int64)
    empty = np.iinfo(np.int64).min
    if len(placed_us):
        base = placed_us.min()
        seconds = (placed_us - base) // 1_000_000
        if seconds.max() < (1 << 31) and n_customers < (1 << 31):
            order = np.argsort((customer_pos << 32) | seconds, kind="stable")
        else:
            order = np.lexsort((placed_us, customer_pos))
    else:
        order = np.empty(0, dtype=np.int64)
    cust, t = customer_pos[order], placed_us[order]
    starts = np.ones(len(cust), dtype=bool)
    starts[1:] = cust[1:] != cust[:-1]
    ends = np.ones(len(cust), dtype=bool)
    ends[:-1] = starts[1:]
    first_at = np.full(n_customers, empty, dtype=np.int64)
    last_at = np.full(n_customers, empty, dtype=np.int64)
    first_at[cust[starts]] = t[starts]
    last_at[cust[ends]] = t[ends]

    day = np.floor_divide(t, DAY_US)
    new_day = starts.copy()
    new_day[1:] |= day[1:] != day[:-1]
    day_cust, day_t = cust[new_day], t[new_day]
    purchase_days = np.bincount(day_cust, minlength=n_customers).astype(np.int64)
    last_day = np.ones(len(day_cust), dtype=bool)
    last_day[:-1] = day_cust[1:] != day_cust[:-1]
    last_purchase_day_at = np.full(n_customers, empty, dtype=np.int64)
    last_purchase_day_at[day_cust[last_day]] = day_t[last_day]
    same = day_cust[1:] == day_cust[:-1]
    gaps = (np.diff(day_t)[same]) / DAY_US
    return PurchaseHistory(
        order_customer=cust,
        order_time=t,
        order_index=order,
        purchase_days=purchase_days,
        first_at=first_at,
        last_at=last_at,
        last_purchase_day_at=last_purchase_day_at,
        gaps_days=gaps,
        gap_customer=day_cust[1:][same],
    )


# ---------------------------------------------------------------------------------------------
# the model


@dataclass(frozen=True)
class BgNbdParams:
    """BG/NBD parameters; alpha in days (purchase rate ~ Gamma(r, alpha)), dropout ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float

    def __post_init__(self):
        for name in ("r", "alpha", "a", "b"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"BG/NBD parameter {name} must be a positive finite number, got {value!r}")


def _arrays(x, t_x, T) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, t_x, T = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (x, t_x, T))
    if np.any(x < 0) or np.any(t_x < 0) or np.any(T < t_x):
        raise ValueError("BG/NBD inputs need x >= 0 and 0 <= t_x <= T")
    return x, t_x, T


def log_likelihood(params: BgNbdParams, x, t_x, T) -> np.ndarray:
    """Per-customer log-likelihood (FHL 2005, eq. 6), written out term by term."""
    x, t_x, T = _arrays(x, t_x, T)
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    repeat = x > 0
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + T)
    bx1 = np.where(repeat, b + x - 1.0, 1.0)
    a4 = np.where(repeat, np.log(a) - np.log(bx1) - (r + x) * np.log(alpha + t_x), -np.inf)
    return a1 + a2 + np.logaddexp(a3, a4)


class _Objective:
    """Mean negative log-likelihood and its gradient in log-parameters, for the optimizer.

    Terms that depend on x alone (gamma functions, log(b + x - 1)) are computed once per
    distinct x; the two-term mixture costs one exp and one log1p per customer.
    """

    def __init__(self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray):
        self.ux, inverse = np.unique(x, return_inverse=True)
        self.inverse = inverse.ravel()
        self.x, self.t_x, self.T = x, t_x, T
        self.n = len(x)

    def __call__(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        r, alpha, a, b = np.exp(theta)
        ux, inv, x, t_x, T = self.ux, self.inverse, self.x, self.t_x, self.T
        per_x = np.stack(
            [
                gammaln(r + ux) - gammaln(r) + gammaln(a + b) + gammaln(b + ux) - gammaln(b) - gammaln(a + b + ux),
                digamma(r + ux) - digamma(r),
                digamma(a + b) - digamma(a + b + ux),
                digamma(a + b) + digamma(b + ux) - digamma(b) - digamma(a + b + ux),
                np.where(ux > 0, np.log(a) - np.log(np.where(ux > 0, b + ux - 1.0, 1.0)), -np.inf),
                1.0 / np.where(ux > 0, b + ux - 1.0, 1.0),
            ]
        )[:, inv]
        g, d_r, d_a, d_b, log_a_bx1, inv_bx1 = per_x
        log_t = np.log(alpha + T)
        log_tx = np.log(alpha + t_x)
        rx = r + x
        a3 = -rx * log_t
        a4 = log_a_bx1 - rx * log_tx  # -inf for one-time buyers
        gap = a4 - a3
        e = np.exp(-np.abs(gap))  # the smaller term over the larger, in (0, 1]
        w4 = np.where(gap > 0, 1.0, e) / (1.0 + e)  # posterior weight of the a4 term
        w3 = 1.0 - w4
        ll = g + r * np.log(alpha) + np.maximum(a3, a4) + np.log1p(e)
        grad = np.array(
            [
                r * np.sum(d_r + np.log(alpha) - w3 * log_t - w4 * log_tx),
                alpha * np.sum(r / alpha - rx * (w3 / (alpha + T) + w4 / (alpha + t_x))),
                a * np.sum(d_a + w4 / a),
                b * np.sum(d_b - w4 * inv_bx1),
            ]
        )
        return -float(np.sum(ll)) / self.n, -grad / self.n


@dataclass(frozen=True)
class FitOutcome:
    params: BgNbdParams
    log_likelihood: float  # mean per customer at the optimum
    converged: bool
    iterations: int
    message: str


def fit_bgnbd(x, t_x, T) -> FitOutcome:
    """Maximum-likelihood BG/NBD fit on (x, t_x, T) in days."""
    x, t_x, T = _arrays(x, t_x, T)
    if not len(x):
        raise ValueError("cannot fit BG/NBD on no customers")
    rate = max(float(x.sum()), 0.5) / max(float(T.sum()), 1e-9)  # repeat purchases per day, ignoring dropout
    theta0 = np.log([1.0, 1.0 / rate, 1.0, 3.0])
    theta0 = np.clip(theta0, _LOG_BOUNDS[0] + 1, _LOG_BOUNDS[1] - 1)
    objective = _Objective(x, t_x, T)
    # SLSQP rather than L-BFGS-B: same optima here, and L-BFGS-B's many tiny BLAS calls wake
    # OpenBLAS worker threads whose spinning took the second core from the likelihood (2-3x slower).
    result = minimize(
        objective,
        theta0,
        jac=True,
        method="SLSQP",
        bounds=[_LOG_BOUNDS] * 4,
        options={"maxiter": 1000, "ftol": 1e-12},
    )
    r, alpha, a, b = np.exp(result.x)
    lower, upper = np.isclose(result.x, _LOG_BOUNDS[0]), np.isclose(result.x, _LOG_BOUNDS[1])
    bounded = lower | upper
    free_gradient = np.abs(result.jac[~bounded]) if np.all(np.isfinite(result.jac)) else np.array([np.inf])
    grad_ok = bool(free_gradient.size == 0 or free_gradient.max() < 1e-4)
    rate_bound = bool(bounded[:2].any())  # r or alpha at a bound: degenerate purchase rates, not a usable fit
    converged = bool((result.success or grad_ok) and np.isfinite(result.fun) and not rate_bound)
    message = str(result.message)
    if bounded[2:].any():  # a -> 0 or b -> infinity: dropout probability -> 0, the model's no-dropout (NBD) limit
        message += " (dropout parameters at their bound: no measurable dropout, the NBD limit)"
    if rate_bound:
        message += " (a purchase-rate parameter reached its bound)"
    return FitOutcome(
        BgNbdParams(float(r), float(alpha), float(a), float(b)), -float(result.fun), converged, int(result.nit), message
    )


def p_alive(params: BgNbdParams, x, t_x, T) -> np.ndarray:
    """P(still active at T | x, t_x, T) = 1 / (1 + [x>0] a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x))."""
    x, t_x, T = _arrays(x, t_x, T)
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    repeat = x > 0
    bx1 = np.where(repeat, b + x - 1.0, 1.0)
    log_odds_dead = np.log(a) - np.log(bx1) + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
    return np.where(repeat, expit(-log_odds_dead), 1.0)


@lru_cache(maxsize=4096)
def _beta_nodes(a: float, b: float, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Jacobi nodes in p and weights (summing to 1) for the Beta(a, b) density on [0, 1].

    Golub-Welsch on the Jacobi recurrence for the weight (1-u)^(b-1) (1+u)^(a-1), p = (1+u)/2.
    Written out rather than scipy's roots_jacobi, whose total-mass factor 2^(a+b-1) B(a, b)
    overflows once b + x passes ~1000; the normalised weights never need it.
    """
    alpha, beta = b - 1.0, a - 1.0
    k = np.arange(nodes, dtype=np.float64)
    s = 2.0 * k + alpha + beta
    with np.errstate(divide="ignore", invalid="ignore"):
        diagonal = (beta**2 - alpha**2) / (s * (s + 2.0))
    if abs(alpha + beta) < 1e-12:  # k = 0 term is 0/0 there; its limit
        diagonal[0] = (beta - alpha) / (alpha + beta + 2.0)
    k1, s1 = k[1:], s[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        off2 = 4.0 * k1 * (k1 + alpha) * (k1 + beta) * (k1 + alpha + beta) / (s1**2 * (s1 + 1.0) * (s1 - 1.0))
    if nodes > 1:  # k = 1: (k + alpha + beta) and (s - 1) are the same factor; cancelled (0/0 at alpha + beta = -1)
        off2[0] = 4.0 * (1.0 + alpha) * (1.0 + beta) / ((2.0 + alpha + beta) ** 2 * (3.0 + alpha + beta))
    off = np.sqrt(off2)
    u, vectors = eigh_tridiagonal(diagonal, off)
    weights = vectors[0] ** 2
    return (1.0 + u) / 2.0, weights / weights.sum()


def expected_purchases(params: BgNbdParams, horizon_days: float, x, t_x, T, *, nodes: int = QUADRATURE_NODES):
    """E[purchase days in (T, T + horizon] | x, t_x, T], by quadrature over the dropout p."""
    x, t_x, T = _arrays(x, t_x, T)
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    alive = p_alive(params, x, t_x, T)
    out = np.empty(len(x), dtype=np.float64)
    ux, inverse = np.unique(x, return_inverse=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(ux) + 1))
    for k, value in enumerate(ux):
        rows = order[bounds[k] : bounds[k + 1]]
        p, w = _beta_nodes(float(a), float(b + value), nodes)
        for start in range(0, len(rows), 65_536):  # bounded temporaries: rows x nodes
            chunk = rows[start : start + 65_536]
            z = horizon_days / (alpha + T[chunk])
            # (1 - (1 + p z)^-(r+x)) / p, computed without cancellation
            f = -np.expm1(-(r + value) * np.log1p(np.outer(z, p))) / p
            out[chunk] = np.einsum("ij,j->i", f, w)  # not BLAS: no worker threads for a 24-wide product
    return alive * out


def expected_purchases_closed_form(params: BgNbdParams, horizon_days: float, x, t_x, T) -> np.ndarray:
    """FHL 2005 eq. 10 with the Gauss hypergeometric function; reference for well-conditioned cases."""
    x, t_x, T = _arrays(x, t_x, T)
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    t = horizon_days
    hyp = hyp2f1(r + x, b + x, a + b + x - 1.0, t / (alpha + T + t))
    first = (a + b + x - 1.0) / (a - 1.0) * (1.0 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp)
    bx1 = np.where(x > 0, b + x - 1.0, 1.0)
    second = 1.0 + (x > 0) * (a / bx1) * ((alpha + T) / (alpha + t_x)) ** (r + x)
    return first / second


def simulate_bgnbd(params: BgNbdParams, T, rng: np.random.Generator, *, extra_days: float = 0.0):
    """Simulate customers from the model: first purchase at 0, observed for T (+ extra_days) days.

    Returns (x, t_x, alive_at_T, future): repeat purchases and the last one's time within T,
    whether the customer is still active at T, and purchases in (T, T + extra_days].
    """
    T = np.asarray(T, dtype=np.float64)
    n = len(T)
    lam = rng.gamma(params.r, 1.0 / params.alpha, n)
    p = rng.beta(params.a, params.b, n)
    x = np.zeros(n, dtype=np.int64)
    t_x = np.zeros(n)
    future = np.zeros(n, dtype=np.int64)
    death = np.full(n, np.inf)
    now = np.zeros(n)
    active = np.arange(n)
    while active.size:
        now[active] += rng.exponential(1.0, active.size) / lam[active]
        horizon = T[active] + extra_days
        go_on = now[active] <= horizon
        active = active[go_on]
        inside = now[active] <= T[active]
        x[active[inside]] += 1
        t_x[active[inside]] = now[active[inside]]
        future[active[~inside]] += 1
        drop = rng.random(active.size) < p[active]
        death[active[drop]] = now[active[drop]]
        active = active[~drop]
    return x, t_x, death > T, future


# ---------------------------------------------------------------------------------------------
# per-market fits


@dataclass(frozen=True)
class ModelFit:
    """The parameters a market uses and where they come from (source: market | pooled | none)."""

    market: str
    source: str
    params: BgNbdParams | None
    customers: int  # buyers in the market
    repeat_buyers: int
    fitted_on: int  # customers in the fitted sample (pooled sample for source "pooled")
    log_likelihood: float | None  # mean per customer of the fitted sample
    converged: bool
    iterations: int
    reason: str | None  # why the market does not use its own fit, or "given"
    seconds: float = 0.0
    message: str = ""  # the optimizer's last word on the fit used

    def to_dict(self) -> dict:
        out = asdict(self)
        out["params"] = None if self.params is None else asdict(self.params)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> ModelFit:
        params = data.get("params")
        return cls(**{**data, "params": None if params is None else BgNbdParams(**params)})


def _sample(customer_id: np.ndarray, rows: np.ndarray, size: int) -> np.ndarray:
    if len(rows) <= size:
        return rows
    rank = _hash_rank(customer_id[rows])
    return np.sort(rows[np.argpartition(rank, size - 1)[:size]])


def fit_market_models(
    market: np.ndarray,
    customer_id: np.ndarray,
    x: np.ndarray,
    t_x: np.ndarray,
    T: np.ndarray,
    *,
    min_repeat_buyers: int,
    fit_sample: int,
    given: Mapping[str, ModelFit | Mapping] | None = None,
) -> dict[str, ModelFit]:
    """One ModelFit per market present in ``market`` (buyers only), falling back to a pooled fit."""
    market = np.asarray(market, dtype=object)
    given = {code: fit if isinstance(fit, ModelFit) else ModelFit.from_dict(fit) for code, fit in (given or {}).items()}
    fits: dict[str, ModelFit] = {}
    pooled: list[ModelFit] = []  # computed at most once, lazily

    def pooled_fit() -> ModelFit:
        if not pooled:
            started = time.perf_counter()
            rows = np.arange(len(x))
            repeat = int(np.count_nonzero(x > 0))
            if repeat < min_repeat_buyers:
                reason = f"all markets together have {repeat} repeat buyers (< {min_repeat_buyers})"
                pooled.append(ModelFit("*", "none", None, len(x), repeat, 0, None, False, 0, reason))
            else:
                rows = _sample(customer_id, rows, fit_sample)
                outcome = fit_bgnbd(x[rows], t_x[rows], T[rows])
                source = "pooled" if outcome.converged else "none"
                reason = None if outcome.converged else f"pooled fit did not converge: {outcome.message}"
                pooled.append(
                    ModelFit(
                        "*", source, outcome.params if outcome.converged else None, len(x), repeat, len(rows),
                        outcome.log_likelihood, outcome.converged, outcome.iterations, reason,
                        time.perf_counter() - started, outcome.message,
                    )
                )  # fmt: skip
        return pooled[0]

    for code in sorted(pd.unique(market)):
        rows = np.flatnonzero(market == code)
        repeat = int(np.count_nonzero(x[rows] > 0))
        if code in given:
            fit = given[code]
            fits[code] = ModelFit(
                code, fit.source, fit.params, len(rows), repeat, fit.fitted_on, fit.log_likelihood, fit.converged,
                fit.iterations, "given", 0.0, fit.message,
            )  # fmt: skip
            continue
        started = time.perf_counter()
        reason = None
        if repeat < min_repeat_buyers:
            reason = f"{repeat} repeat buyers (< {min_repeat_buyers})"
        else:
            sample = _sample(customer_id, rows, fit_sample)
            outcome = fit_bgnbd(x[sample], t_x[sample], T[sample])
            if outcome.converged:
                fits[code] = ModelFit(
                    code, "market", outcome.params, len(rows), repeat, len(sample), outcome.log_likelihood, True,
                    outcome.iterations, None, time.perf_counter() - started, outcome.message,
                )  # fmt: skip
                continue
            reason = f"fit did not converge: {outcome.message}"
        base = pooled_fit()
        fallback_reason = reason if base.source == "pooled" else f"{reason}; {base.reason}"
        fits[code] = ModelFit(
            code, base.source, base.params, len(rows), repeat, base.fitted_on, base.log_likelihood, base.converged,
            base.iterations, fallback_reason, base.seconds, base.message,
        )  # fmt: skip
    return fits
