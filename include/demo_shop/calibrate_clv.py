"""Held-out calibration of the purchase model (BG/NBD) on the demo shop.

python -m demo_shop.calibrate_clv --customers 50000
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta

from demo_shop.generator import generate_store
from remarketing.profiles.calibration import calibration_report


def main(argv: list[str] | None = None) -> int:
    """Calibration on the demo shop: ``python -m demo_shop.calibrate_clv --customers 50000``."""
    parser = argparse.ArgumentParser(description="Held-out calibration of the purchase model on the demo shop.")
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--as-of", default="2026-06-01T00:00:00+00:00", help="the demo shop's now (ISO 8601)")
    parser.add_argument("--horizon-days", type=int, default=90)
    args = parser.parse_args(argv)
    as_of = datetime.fromisoformat(args.as_of).astimezone(UTC)
    frames = generate_store(args.customers, seed=args.seed, as_of=as_of)
    started = time.perf_counter()
    report = calibration_report(
        frames["orders"], frames["customers"], split_at=as_of - timedelta(days=args.horizon_days),
        horizon_days=args.horizon_days,
    )  # fmt: skip
    print(f"demo shop: {args.customers} customers, seed {args.seed}, as of {as_of:%Y-%m-%d}")
    print(report.to_markdown())
    print(f"\n({time.perf_counter() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
