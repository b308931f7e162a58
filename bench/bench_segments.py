"""Benchmark: compute_profiles at ``size`` customers with 10 order lines per customer.

Target (issue 4): 1M customers and 10M order lines computed in under 30 s and 4 GB peak memory on
the 2-core machine. The shop is synthetic, generated directly with numpy (the demo generator
gives ~4.5 lines per customer and takes ~20 s at 1M): seven markets, 65% buyers with skewed
order counts over two years, 2.3 lines per order, 3% cancelled and 2% refunded orders, 40
categories. The frames have every canonical column, in the dtypes of validated snapshots.

Everything runs in a child process so that memory is that of this computation alone: the child
builds the frames, records their resident size, resets the kernel's peak-RSS mark
(/proc/self/clear_refs), runs compute_profiles and reads the peak back (VmHWM). The peak is the
whole process: input frames plus the computation.

Baseline: a straightforward per-customer ``groupby(...).apply`` of the same RFM (recency,
frequency, monetary, then the same within-market scores) on a random sample of
``APPLY_SAMPLE`` customers, extrapolated linearly to ``size`` (the entry name says so); on that
sample both implementations must agree exactly or the benchmark fails.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from bench.run import entry

AS_OF = datetime(2026, 11, 22, 6, tzinfo=UTC)
APPLY_SAMPLE = 20_000
LINES_PER_CUSTOMER = 10
LINES_PER_ORDER = np.array([0.32, 0.28, 0.2, 0.12, 0.08])  # 1..5 lines, mean 2.36
MARKET_SHARE = {"US": 0.30, "DE": 0.18, "GB": 0.14, "FR": 0.12, "JP": 0.10, "BR": 0.09, "CN": 0.07}
CURRENCY = {"US": "USD", "DE": "EUR", "GB": "GBP", "FR": "EUR", "JP": "JPY", "BR": "BRL", "CN": "CNY"}
ZONES = {"US": ["America/New_York", "America/Chicago", "America/Los_Angeles"], "DE": ["Europe/Berlin"],
         "GB": ["Europe/London"], "FR": ["Europe/Paris"], "JP": ["Asia/Tokyo"], "BR": ["America/Sao_Paulo"],
         "CN": ["Asia/Shanghai"]}  # fmt: skip
STATUSES = ("placed", "shipped", "delivered", "cancelled", "refunded")
_STR = pd.StringDtype("pyarrow", na_value=np.nan)


def _labels(labels, codes: np.ndarray, missing: np.ndarray | None = None):
    return pd.array(pa.array(list(labels), pa.string()).take(pa.array(codes, mask=missing)), dtype=_STR)


def _ts(seconds: np.ndarray) -> pd.Series:
    return pd.Series(pd.DatetimeIndex(seconds.astype("datetime64[s]")).as_unit("us").tz_localize(UTC))


def synthetic_store(customers: int, seed: int = 7) -> dict[str, pd.DataFrame]:
    """Canonical customers, orders, order_items and products for ``customers`` customers, ~10 lines each."""
    rng = np.random.default_rng(seed)
    now = int(AS_OF.timestamp())
    n = customers
    codes = list(MARKET_SHARE)
    market = rng.choice(len(codes), n, p=list(MARKET_SHARE.values()))
    zone_names = sorted({z for zones in ZONES.values() for z in zones})
    zone = np.array([zone_names.index(ZONES[codes[m]][0]) for m in range(len(codes))])[market]
    us = market == codes.index("US")
    zone[us] = np.array([zone_names.index(z) for z in ZONES["US"]])[rng.integers(0, 3, us.sum())]
    registered = now - rng.integers(0, 730 * 86_400, n)
    frame_customers = pd.DataFrame(
        {
            "customer_id": np.arange(1, n + 1, dtype=np.int64),
            "email": _labels(["redacted@example.com"], np.zeros(n, dtype=np.int64)),
            "first_name": _labels(["A"], np.zeros(n, dtype=np.int64)),
            "last_name": _labels(["B"], np.zeros(n, dtype=np.int64)),
            "locale": _labels(["en-US"], np.zeros(n, dtype=np.int64)),
            "country": _labels(codes, market),
            "region": _labels([""], np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool)),
            "market": _labels(codes, market),
            "time_zone": _labels(zone_names, zone, rng.random(n) < 0.3),
            "marketing_consent": rng.random(n) < 0.6,
            "registered_at": _ts(registered),
            "updated_at": _ts(registered),
        }
    )

    n_lines_target = LINES_PER_CUSTOMER * n
    n_orders = int(n_lines_target / (LINES_PER_ORDER * np.arange(1, 6)).sum())
    buyers = np.flatnonzero(rng.random(n) < 0.65)
    weight = rng.gamma(0.7, 1.0, len(buyers))
    o_customer = buyers[np.minimum(np.searchsorted(np.cumsum(weight) / weight.sum(), rng.random(n_orders)),
                                   len(buyers) - 1)]  # fmt: skip
    o_time = np.maximum(now - rng.integers(60, 730 * 86_400, n_orders), registered[o_customer] + 60)
    order = np.argsort(o_time, kind="stable")
    o_customer, o_time = o_customer[order], o_time[order]
    u = rng.random(n_orders)
    status = np.where(u < 0.03, 3, np.where(u < 0.05, 4, 2))
    status[(now - o_time < 5 * 86_400) & (status == 2)] = 1
    lines = 1 + np.searchsorted(np.cumsum(LINES_PER_ORDER), rng.random(n_orders))
    l_order = np.repeat(np.arange(n_orders), lines)
    n_lines = len(l_order)
    n_products = 5000
    category = rng.integers(0, 40, n_products)
    product_price = np.round(np.exp(rng.uniform(np.log(5), np.log(300), n_products)), 2)
    l_product = np.minimum(rng.zipf(1.3, n_lines) - 1, n_products - 1)
    l_qty = 1 + (rng.random(n_lines) < 0.12) + (rng.random(n_lines) < 0.03)
    fx = np.array([{"USD": 1.09, "EUR": 1.0, "GBP": 0.86, "JPY": 163.0, "BRL": 5.95, "CNY": 7.85}[CURRENCY[c]]
                   for c in codes])  # fmt: skip
    l_unit = np.round(product_price[l_product] * fx[market[o_customer[l_order]]], 2)
    discounted = rng.random(n_orders) < 0.2
    l_discount = np.where(discounted[l_order], np.round(0.1 * l_qty * l_unit, 2), 0.0)
    subtotal = np.bincount(l_order, weights=l_qty * l_unit - l_discount, minlength=n_orders)
    o_discount = np.bincount(l_order, weights=l_discount, minlength=n_orders)
    currencies = sorted(set(CURRENCY.values()))
    order_currency = np.array([currencies.index(CURRENCY[c]) for c in codes])[market[o_customer]]
    frame_orders = pd.DataFrame(
        {
            "order_id": np.arange(1, n_orders + 1, dtype=np.int64),
            "customer_id": o_customer + 1,
            "market": _labels(codes, market[o_customer]),
            "currency": _labels(currencies, order_currency),
            "status": _labels(STATUSES, status),
            "total_amount": np.round(subtotal, 2),
            "discount_amount": np.round(o_discount, 2),
            "coupon_code": _labels(["SAVE10"], np.zeros(n_orders, dtype=np.int64), ~discounted),
            "placed_at": _ts(o_time),
            "updated_at": _ts(o_time),
        }
    )
    frame_items = pd.DataFrame(
        {
            "order_item_id": np.arange(1, n_lines + 1, dtype=np.int64),
            "order_id": l_order + 1,
            "product_id": l_product + 1,
            "quantity": l_qty.astype(np.int64),
            "unit_price": l_unit,
            "discount_amount": l_discount,
            "updated_at": _ts(o_time[l_order]),
        }
    )
    frame_products = pd.DataFrame(
        {
            "product_id": np.arange(1, n_products + 1, dtype=np.int64),
            "sku": _labels([f"SKU-{i}" for i in range(n_products)], np.arange(n_products)),
            "category": _labels([f"category-{c:02d}" for c in range(40)], category),
            "price": product_price,
            "currency": _labels(["EUR"], np.zeros(n_products, dtype=np.int64)),
            "active": np.ones(n_products, dtype=bool),
            "updated_at": _ts(np.full(n_products, now - 86_400)),
        }
    )
    return {
        "customers": frame_customers,
        "orders": frame_orders,
        "order_items": frame_items,
        "products": frame_products,
    }


def rfm_apply(customers: pd.DataFrame, orders: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
    """The straightforward way: one Python function call per customer, then the same within-market scores."""
    valid = orders[~orders["status"].isin(["cancelled", "refunded"]) & (orders["placed_at"] <= as_of)]

    def per_customer(group: pd.DataFrame) -> pd.Series:
        return pd.Series(
            {
                "recency_days": (as_of - group["placed_at"].max()) / pd.Timedelta(days=1),
                "frequency": len(group),
                "monetary": group["total_amount"].sum(),
            }
        )

    per = valid.groupby("customer_id")[["placed_at", "total_amount"]].apply(per_customer)
    out = customers[["customer_id", "market"]].merge(per, left_on="customer_id", right_index=True, how="left")
    out = out.sort_values("customer_id").reset_index(drop=True)
    out["frequency"] = out["frequency"].fillna(0).astype(np.int64)
    out["monetary"] = out["monetary"].fillna(0.0)
    buyers = out["frequency"] > 0
    from remarketing.profiles.rfm import scores_within  # the scoring rule itself: ties are the rule's business

    group = pd.factorize(out.loc[buyers, "market"])[0]
    for score, key in (("r_score", -out["recency_days"]), ("f_score", out["frequency"]), ("m_score", out["monetary"])):
        out[score] = pd.array(np.full(len(out), pd.NA), dtype="Int64")
        out.loc[buyers, score] = scores_within(key[buyers].to_numpy(dtype=np.float64), group)
    return out


def _peak_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(size: int) -> dict:
    from remarketing.markets import load_markets
    from remarketing.profiles.config import load_lifecycle_config
    from remarketing.profiles.lifecycle import compute_profiles
    from remarketing.profiles.rfm import compute_rfm

    markets, config = load_markets(), load_lifecycle_config()
    started = time.perf_counter()
    frames = synthetic_store(size)
    generated = time.perf_counter() - started
    gc.collect()
    input_kib = _status_kib("VmRSS")
    reset = _peak_reset()

    started = time.perf_counter()
    result = compute_profiles(
        frames["customers"], frames["orders"], frames["order_items"], frames["products"], markets=markets,
        as_of=AS_OF, config=config,
    )  # fmt: skip
    compute_s = time.perf_counter() - started
    peak_kib = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stages = result.profiles["stage"].value_counts().to_dict()
    steps = {k: round(v, 2) for k, v in result.seconds.items()}
    fit_seconds = round(sum(fit.seconds for fit in result.model_fits.values()), 2)
    del result
    gc.collect()

    started = time.perf_counter()
    compute_rfm(frames["customers"], frames["orders"], markets=markets, as_of=AS_OF)
    rfm_s = time.perf_counter() - started

    rng = np.random.default_rng(3)
    sample_ids = np.sort(rng.choice(frames["customers"]["customer_id"].to_numpy(), min(APPLY_SAMPLE, size), False))
    sample_customers = frames["customers"][frames["customers"]["customer_id"].isin(sample_ids)]
    sample_orders = frames["orders"][frames["orders"]["customer_id"].isin(sample_ids)]
    started = time.perf_counter()
    vector = compute_rfm(sample_customers, sample_orders, markets=markets, as_of=AS_OF)
    vector_sample_s = time.perf_counter() - started
    started = time.perf_counter()
    looped = rfm_apply(sample_customers, sample_orders, AS_OF)
    apply_sample_s = time.perf_counter() - started
    columns = ["customer_id", "recency_days", "frequency", "monetary", "r_score", "f_score", "m_score"]
    pd.testing.assert_frame_equal(vector[columns], looped[columns], check_exact=False, rtol=1e-9, check_dtype=False)

    return {
        "customers": size,
        "orders": len(frames["orders"]),
        "order_lines": len(frames["order_items"]),
        "generate_s": generated,
        "compute_s": compute_s,
        "input_rss_mib": input_kib / 1024,
        "peak_rss_mib": peak_kib / 1024,
        "peak_is_compute_only": reset,
        "stages": stages,
        "steps_s": steps,
        "model_fit_s": fit_seconds,
        "rfm_vectorized_s": rfm_s,
        "sample": len(sample_ids),
        "rfm_vectorized_sample_s": vector_sample_s,
        "rfm_apply_sample_s": apply_sample_s,
    }


def run(size: int) -> list[dict]:
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_segments", "--child", str(size)],
        capture_output=True, text=True, cwd=repo, env=env, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"bench_segments child failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"   segments: {figures['customers']} customers, {figures['orders']} orders, {figures['order_lines']} lines; "
        f"stages {figures['stages']}; steps {figures['steps_s']} (of which fitting {figures['model_fit_s']} s)",
        file=sys.stderr,
    )
    extrapolated = figures["rfm_apply_sample_s"] * size / figures["sample"]
    peak_name = "segments.compute_profiles_peak_rss" + ("" if figures["peak_is_compute_only"] else "_process")
    return [
        entry("segments.compute_profiles", figures["compute_s"], "s", size),
        entry("segments.order_lines", figures["order_lines"], "rows", size),
        entry("segments.compute_profiles_lines_per_s", figures["order_lines"] / figures["compute_s"], "rows/s", size),
        entry("segments.compute_profiles_customers_per_s", size / figures["compute_s"], "customers/s", size),
        entry(peak_name + " (input frames included)", figures["peak_rss_mib"], "MiB", size),
        entry("segments.input_frames_rss", figures["input_rss_mib"], "MiB", size),
        entry(
            f"segments.rfm vectorized vs per-customer groupby-apply (baseline extrapolated from {figures['sample']} customers)",
            figures["rfm_vectorized_s"],
            "s",
            size,
            baseline_value=extrapolated,
        ),
        entry(
            f"segments.rfm vectorized vs groupby-apply on the same {figures['sample']} customers",
            figures["rfm_vectorized_sample_s"],
            "s",
            size,
            baseline_value=figures["rfm_apply_sample_s"],
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", type=int, help="run the measurement in this process for N customers")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    parser.error("use python -m bench.run --only segments --size N")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
