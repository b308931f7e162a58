"""A flat invoice-line export, modelled on the well-known UK online-retail data set.

Why: many shops can hand over only one flat table of invoice lines, with the traps of a real
export: float customer ids, guests without one, country names, "C" credit notes, postage and fee
lines, naive local times. This seeded generator produces such a table so that the example mapping
in include/sql/store/examples/flat_invoice_lines/ can be tested on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pandas as pd
import sqlalchemy as sa

TABLE = "invoice_lines"
COLUMNS = (
    "invoice_no",
    "stock_code",
    "description",
    "quantity",
    "invoice_date",
    "unit_price",
    "customer_id",
    "country",
)
DEFAULT_INVOICES = 20_000
MIN_INVOICES = 200  # below this, not every trait (38 countries, each kind of credit note) fits

# Customers per country, shaped like the original export (United Kingdom ~90%).
COUNTRIES = {
    "United Kingdom": 3950, "Germany": 95, "France": 87, "EIRE": 3, "Spain": 31, "Belgium": 25,
    "Switzerland": 21, "Portugal": 19, "Italy": 15, "Finland": 12, "Austria": 11, "Norway": 10,
    "Netherlands": 9, "Australia": 9, "Denmark": 9, "Channel Islands": 9, "Cyprus": 8, "Sweden": 8,
    "Japan": 8, "Poland": 6, "USA": 4, "Canada": 4, "Unspecified": 4, "Israel": 4, "Greece": 4,
    "Bahrain": 2, "Malta": 2, "United Arab Emirates": 2, "Hong Kong": 1, "Lithuania": 1, "Singapore": 1,
    "Iceland": 1, "RSA": 1, "Brazil": 1, "Saudi Arabia": 1, "Czech Republic": 1, "Lebanon": 1,
    "European Community": 1,
}  # fmt: skip
COUNTRY_NAMES = np.array(list(COUNTRIES), dtype=object)
UK = 0
GUEST_UK_SHARE = 0.96  # guests are retail buyers, almost all in the United Kingdom

# Non-product codes: postage, manual entry, discount, bank charges, marketplace fee.
SPECIAL = {"POST": "POSTAGE", "M": "MANUAL", "D": "DISCOUNT", "BANK CHARGES": "BANK CHARGES", "AMAZONFEE": "AMAZON FEE"}

CREDIT_SHARE = 0.02  # of all invoices
GUEST_INVOICE_SHARE = 0.16  # of sales invoices; guests buy more lines, so ~25% of lines
INVOICES_PER_CUSTOMER = 4.6
CUSTOMER_LINES, GUEST_LINES = 17, 30  # mean lines per sales invoice
SPLIT_TIMESTAMP_SHARE = 0.05  # invoices whose later lines are stamped a minute or two later

START = np.datetime64("2010-12-01T00:00", "m")  # a Wednesday
DAYS = 374  # to 2011-12-09
DAY_MINUTES = 1440
HOURS = np.arange(7, 21)
HOUR_WEIGHT = np.array([0.3, 1.6, 3.0, 4.2, 4.6, 5.6, 5.2, 4.2, 3.2, 1.8, 0.8, 0.5, 0.3, 0.2])

ITEMS = (
    "T-LIGHT HOLDER", "METAL LANTERN", "CUPID HEARTS COAT HANGER", "UNION FLAG HOT WATER BOTTLE",
    "JUMBO BAG", "LUNCH BAG", "CAKE CASES", "ALARM CLOCK BAKELIKE", "PAPER CHAIN KIT", "DOORMAT",
    "CHILDRENS APRON", "TEA TOWEL", "PHOTO FRAME", "NIGHT LIGHT", "MUG", "STORAGE TIN", "HANGING HEART",
    "CUSHION COVER", "PARTY BUNTING", "RECIPE BOX", "PLASTERS IN TIN", "DRAWER KNOB", "GIFT WRAP",
    "SHOPPER BAG", "LUNCH BOX", "WOODEN STAR", "CAKESTAND 3 TIER", "CANDLE", "DOILIES", "NAPKINS",
    "PICNIC BASKET", "WALL CLOCK", "BIRD ORNAMENT", "SNACK BOXES", "HEART DECORATION", "TRINKET BOX",
)  # fmt: skip
STYLES = (
    "WHITE HANGING", "VINTAGE", "RETROSPOT", "SET OF 3", "PACK OF 12", "HEART OF WICKER", "SMALL",
    "LARGE", "JUMBO", "ANTIQUE", "GLASS", "ZINC", "WOODEN", "ENAMEL", "FELTCRAFT", "CHRISTMAS",
    "PAISLEY", "SPACEBOY", "WOODLAND", "REGENCY", "50'S", "HOME SWEET HOME", "S/4", "DOLLY GIRL",
)  # fmt: skip
COLOURS = ("RED", "PINK", "BLUE", "WHITE", "IVORY", "GREEN", "BLACK", "CREAM", "SILVER", "GOLD")
SUFFIXES = "ABCDEFG"

CUSTOMER_QUANTITIES = np.array([1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 25, 36, 48, 72, 96, 144])
CUSTOMER_QUANTITY_WEIGHT = np.array([10, 12, 6, 6, 10, 3, 5, 16, 2, 2, 6, 2, 2, 2, 1, 1, 1], dtype=float)
GUEST_QUANTITIES = np.array([1, 2, 3, 4, 5, 6, 10])
GUEST_QUANTITY_WEIGHT = np.array([55, 20, 8, 6, 3, 6, 2], dtype=float)
BULK_QUANTITIES = np.array([100, 144, 200, 288, 500, 1000])  # small parts priced to a tenth of a penny


# --------------------------------------------------------------------------------------------
# generation


def generate(invoices: int = DEFAULT_INVOICES, seed: int = 7) -> pd.DataFrame:
    """The ``invoice_lines`` table: ``invoices`` distinct invoice numbers, ~2% of them credit notes.

    Deterministic: the same (invoices, seed) gives an identical frame. Rows come in invoice-number
    order; ``customer_id`` is float (NaN for guests) and ``invoice_date`` naive London time text.
    """
    if invoices < MIN_INVOICES:
        raise ValueError(f"invoices must be at least {MIN_INVOICES}, got {invoices}")
    rng = np.random.default_rng(seed)
    n_credit = round(invoices * CREDIT_SHARE)
    n_sales = invoices - n_credit
    n_guest_sales = round(n_sales * GUEST_INVOICE_SHARE)
    n_customer_sales = n_sales - n_guest_sales
    n_customers = max(len(COUNTRIES), round(n_customer_sales / INVOICES_PER_CUSTOMER))

    items = _catalogue(rng, max(60, min(4000, round(invoices * 0.075))))
    customer_ids, home, moved_to = _customers(rng, n_customers)
    docs = _sales_documents(rng, n_customer_sales, n_guest_sales, home, moved_to)
    lines = _sales_lines(rng, docs, items)
    docs, lines = _credit_notes(rng, docs, lines, n_credit, items)
    return _assemble(rng, docs, lines, items, customer_ids)


def _catalogue(rng: np.random.Generator, n_products: int) -> dict[str, np.ndarray]:
    """Products (5-digit codes, colour variants with a letter suffix) followed by the special codes."""
    bases = rng.choice(np.arange(10_000, 90_000), size=n_products, replace=False)
    codes: list[str] = []
    names: list[str] = []
    for base in bases.tolist():
        style, item = STYLES[rng.integers(len(STYLES))], ITEMS[rng.integers(len(ITEMS))]
        variants = 1 if rng.random() < 0.75 else int(rng.integers(2, 5))
        colours = rng.choice(len(COLOURS), size=variants, replace=False)
        for index, colour in enumerate(colours.tolist()):
            if len(codes) == n_products:
                break
            codes.append(str(base) if variants == 1 else f"{base}{SUFFIXES[index]}")
            names.append(
                f"{style} {COLOURS[colour]} {item}" if variants > 1 or rng.random() < 0.5 else f"{style} {item}"
            )
        if len(codes) == n_products:
            break
    n = len(codes)
    price = np.round(np.clip(rng.lognormal(np.log(2.6), 0.75, n), 0.19, 60.0), 2)
    small_parts = rng.random(n) < 0.02
    price[small_parts] = np.round(rng.uniform(0.021, 0.3, small_parts.sum()), 3)
    changes = rng.random(n) < 0.10  # a price change during the year
    change_minute = np.where(changes, rng.integers(60, DAYS - 60, n) * DAY_MINUTES, np.iinfo(np.int64).max)
    factor = rng.choice([0.9, 1.1, 1.2], n)
    new_price = np.where(small_parts, np.round(price * factor, 3), np.round(price * factor, 2))
    popularity = 1.0 / (rng.permutation(n) + 8.0) ** 0.9
    special_codes = np.array(list(SPECIAL), dtype=object)
    return {
        "code": np.concatenate([np.array(codes, dtype=object), special_codes]),
        "description": np.concatenate([np.array(names, dtype=object), np.array(list(SPECIAL.values()), dtype=object)]),
        "price": price,
        "new_price": new_price,
        "change_minute": change_minute,
        "small_parts": small_parts,
        "popularity": popularity / popularity.sum(),
        "n_products": np.int64(n),
    }


def _special(items: dict[str, np.ndarray], code: str) -> int:
    return int(items["n_products"]) + list(SPECIAL).index(code)


def _customers(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Customer ids (like 17850), home country index, and a second country for the few who move."""
    pool = np.arange(12_346, 12_346 + max(6_000, 2 * n))
    ids = np.sort(rng.choice(pool, size=n, replace=False))
    weights = np.array(list(COUNTRIES.values()), dtype=float)
    home = np.concatenate(
        [np.arange(len(COUNTRIES)), rng.choice(len(COUNTRIES), n - len(COUNTRIES), p=weights / weights.sum())]
    )
    home = rng.permutation(home)
    moves = rng.random(n) < 0.015
    moved_to = np.where(moves, (home + rng.integers(1, len(COUNTRIES), n)) % len(COUNTRIES), -1)
    return ids, home, moved_to


def _business_minutes(rng: np.random.Generator, day: np.ndarray) -> np.ndarray:
    """Minutes since START for a time of day during opening hours on each given day."""
    hour = rng.choice(HOURS, size=len(day), p=HOUR_WEIGHT / HOUR_WEIGHT.sum())
    return day * DAY_MINUTES + hour * 60 + rng.integers(0, 60, len(day))


def _trading_days(rng: np.random.Generator, n: int) -> np.ndarray:
    """Days since START: no Saturdays (the shop's export has none), busier towards the year's end."""
    days = np.arange(DAYS)
    weekday = (days + 2) % 7  # START is a Wednesday; Monday = 0
    weight = (1.0 + 1.5 * (days / DAYS) ** 2) * np.where((days >= 270) & (days < 365), 1.3, 1.0)
    weight[weekday == 5] = 0.0
    return rng.choice(days, size=n, p=weight / weight.sum())


def _sales_documents(rng, n_customer_sales: int, n_guest_sales: int, home: np.ndarray, moved_to: np.ndarray) -> dict:
    n_customers = len(home)
    weights = rng.gamma(0.55, 1.0, n_customers)
    extra = rng.multinomial(n_customer_sales - n_customers, weights / weights.sum())
    customer = np.concatenate([np.repeat(np.arange(n_customers), 1 + extra), np.full(n_guest_sales, -1)])
    minute = _business_minutes(rng, _trading_days(rng, len(customer)))
    country = np.where(customer >= 0, home[np.maximum(customer, 0)], -1)
    # A customer who moved orders from the new country after the middle of their history.
    movers = (customer >= 0) & (moved_to[np.maximum(customer, 0)] >= 0)
    if movers.any():
        frame = pd.DataFrame({"customer": customer[movers], "minute": minute[movers]})
        late = (frame["minute"] > frame.groupby("customer")["minute"].transform("median")).to_numpy()
        country[np.flatnonzero(movers)[late]] = moved_to[customer[movers][late]]
    guests = customer < 0
    weights = np.array(list(COUNTRIES.values()), dtype=float)
    weights[UK] = 0.0
    abroad = rng.choice(len(COUNTRIES), size=guests.sum(), p=weights / weights.sum())
    country[guests] = np.where(rng.random(guests.sum()) < GUEST_UK_SHARE, UK, abroad)
    return {"customer": customer, "minute": minute, "country": country, "credit": np.zeros(len(customer), bool)}


def _sales_lines(rng: np.random.Generator, docs: dict, items: dict) -> dict:
    guest = docs["customer"] < 0
    n_docs = len(guest)
    mean_extra = np.where(guest, GUEST_LINES - 1, CUSTOMER_LINES - 1)
    r = 1.1
    count = 1 + np.minimum(rng.negative_binomial(r, r / (r + mean_extra)), 600)
    doc = np.repeat(np.arange(n_docs), count)
    seq = np.arange(len(doc)) - np.repeat(np.cumsum(count) - count, count)
    n_products = int(items["n_products"])
    item = rng.choice(n_products, size=len(doc), p=items["popularity"])
    line_guest = guest[doc]
    quantity = np.where(
        line_guest,
        rng.choice(GUEST_QUANTITIES, len(doc), p=GUEST_QUANTITY_WEIGHT / GUEST_QUANTITY_WEIGHT.sum()),
        rng.choice(CUSTOMER_QUANTITIES, len(doc), p=CUSTOMER_QUANTITY_WEIGHT / CUSTOMER_QUANTITY_WEIGHT.sum()),
    )
    quantity = np.where(items["small_parts"][item], rng.choice(BULK_QUANTITIES, len(doc)), quantity)
    changed = docs["minute"][doc] >= items["change_minute"][item]
    price = np.where(changed, items["new_price"][item], items["price"][item])
    lines = {"doc": doc, "seq": seq, "item": item, "quantity": quantity, "price": price}

    # Postage on most orders shipped abroad, a few bank charges and manual lines.
    customer_docs = ~guest
    abroad = customer_docs & (docs["country"] != UK) & (rng.random(n_docs) < 0.7)
    bank = customer_docs & (rng.random(n_docs) < 0.003)
    manual = rng.random(n_docs) < 0.004
    extra = [
        (
            abroad,
            "POST",
            rng.choice([1, 2, 3], n_docs, p=[0.8, 0.15, 0.05]),
            rng.choice([15.0, 18.0, 28.0, 40.0], n_docs),
        ),
        (bank, "BANK CHARGES", np.ones(n_docs, np.int64), np.full(n_docs, 15.0)),
        (
            manual,
            "M",
            rng.choice([1, 1, 1, 2, 12], n_docs),
            np.round(np.clip(rng.lognormal(np.log(5), 1.2, n_docs), 0.01, 600), 2),
        ),
    ]
    for position, (mask, code, quantity, price) in enumerate(extra, start=1):
        chosen = np.flatnonzero(mask)
        _append(lines, chosen, count[chosen] + position, _special(items, code), quantity[chosen], price[chosen])
    return lines


def _append(lines: dict, doc, seq, item, quantity, price) -> None:
    n = len(doc)
    new = {
        "doc": np.asarray(doc, np.int64),
        "seq": np.broadcast_to(np.asarray(seq, np.int64), n),
        "item": np.broadcast_to(np.asarray(item, np.int64), n),
        "quantity": np.broadcast_to(np.asarray(quantity, np.int64), n),
        "price": np.broadcast_to(np.asarray(price, float), n),
    }
    for key, values in new.items():
        lines[key] = np.concatenate([lines[key], values])


def _credit_notes(rng, docs: dict, lines: dict, n_credit: int, items: dict) -> tuple[dict, dict]:
    """Add ``n_credit`` credit notes: full reversals (some of a customer's only invoice, so that
    customer ends with everything refunded), partial returns, discounts, and guest fee notes."""
    n_fee = max(1, round(n_credit * 0.1))
    n_discount = max(1, round(n_credit * 0.1))
    n_full = max(1, round(n_credit * 0.4))
    n_partial = n_credit - n_fee - n_discount - n_full
    customer = docs["customer"]
    customer_docs = np.flatnonzero(customer >= 0)
    invoices_per_customer = np.bincount(customer[customer_docs], minlength=customer.max() + 1)
    single = customer_docs[invoices_per_customer[customer[customer_docs]] == 1]
    n_single = min(len(single), (n_full + 1) // 2)
    full_single = rng.choice(single, n_single, replace=False)
    rest = np.setdiff1d(customer_docs, full_single)
    picked = rng.choice(rest, n_full - n_single + n_partial, replace=False)
    full = np.concatenate([full_single, picked[: n_full - n_single]])
    partial = picked[n_full - n_single :]
    discount = rng.choice(customer_docs, n_discount, replace=False)
    anchors = np.concatenate([full, partial, discount])

    base = len(customer)
    new_minute = np.concatenate(
        [_later(rng, docs["minute"][anchors]), _business_minutes(rng, _trading_days(rng, n_fee))]
    )
    docs = {
        "customer": np.concatenate([customer, customer[anchors], np.full(n_fee, -1)]),
        "minute": np.concatenate([docs["minute"], new_minute]),
        "country": np.concatenate([docs["country"], docs["country"][anchors], np.full(n_fee, UK)]),
        "credit": np.concatenate([docs["credit"], np.ones(n_credit, bool)]),
    }
    full_note = np.full(base, -1)  # sales document -> its credit note, one lookup per kind
    full_note[full] = base + np.arange(n_full)
    partial_note = np.full(base, -1)
    partial_note[partial] = base + n_full + np.arange(n_partial)

    # Full reversals: every line of the invoice, quantities negated.
    reversed_lines = np.flatnonzero(np.isin(lines["doc"], full))
    _append(
        lines,
        full_note[lines["doc"][reversed_lines]],
        lines["seq"][reversed_lines],
        lines["item"][reversed_lines],
        -lines["quantity"][reversed_lines],
        lines["price"][reversed_lines],
    )
    # Partial returns: one to three product lines, part of the quantity.
    n_products = int(items["n_products"])
    product_lines = np.flatnonzero(np.isin(lines["doc"], partial) & (lines["item"] < n_products))
    by_doc = pd.Series(product_lines).groupby(lines["doc"][product_lines]).apply(list)
    returned = []
    for target in partial.tolist():
        candidates = by_doc.get(target, [])
        if candidates:
            take = min(len(candidates), int(rng.integers(1, 4)))
            returned.extend(sorted(rng.choice(candidates, take, replace=False).tolist()))
    returned = np.array(returned, np.int64)
    share = rng.uniform(0.2, 1.0, len(returned))
    _append(
        lines,
        partial_note[lines["doc"][returned]],
        np.arange(len(returned)),
        lines["item"][returned],
        -np.maximum(1, np.round(lines["quantity"][returned] * share)).astype(np.int64),
        lines["price"][returned],
    )
    # Discounts granted after the sale.
    prices = np.round(np.clip(rng.lognormal(np.log(8), 0.8, n_discount), 0.5, 300), 2)
    _append(lines, base + n_full + n_partial + np.arange(n_discount), 0, _special(items, "D"), -1, prices)
    # Marketplace fees, bank charges and manual corrections booked against no customer.
    codes = rng.choice(["AMAZONFEE", "BANK CHARGES", "M"], n_fee, p=[0.6, 0.2, 0.2])
    fee_items = np.array([_special(items, code) for code in codes.tolist()])
    amazon = np.round(np.clip(rng.lognormal(np.log(3000), 1.0, n_fee), 5, 20_000), 2)
    manual = np.round(np.clip(rng.lognormal(np.log(50), 1.0, n_fee), 0.5, 2_000), 2)
    fee_prices = np.select([codes == "AMAZONFEE", codes == "BANK CHARGES"], [amazon, np.full(n_fee, 15.0)], manual)
    _append(lines, base + len(anchors) + np.arange(n_fee), 0, fee_items, -1, fee_prices)
    return docs, lines


def _later(rng: np.random.Generator, minute: np.ndarray) -> np.ndarray:
    """A business time one day to a few weeks after each ``minute``; near the end, minutes after it."""
    day = minute // DAY_MINUTES + 1 + rng.geometric(0.12, len(minute))
    day = day + ((day + 2) % 7 == 5)  # no Saturdays
    later = _business_minutes(rng, day)
    soon = minute + rng.integers(5, 120, len(minute))
    return np.where(day < DAYS, later, soon)


def _assemble(rng, docs: dict, lines: dict, items: dict, customer_ids: np.ndarray) -> pd.DataFrame:
    # Invoice numbers follow time; credit notes share the counter with a "C" prefix.
    order = np.lexsort((rng.random(len(docs["minute"])), docs["minute"]))
    number = np.empty(len(order), np.int64)
    number[order] = 536_365 + np.arange(len(order))
    invoice_no = np.where(docs["credit"], "C", "").astype(object) + number.astype(str).astype(object)

    # A few invoices' later lines are stamped a minute or two after the first ones.
    doc, seq = lines["doc"], lines["seq"]
    rank = pd.Series(seq).groupby(doc).rank(method="first").to_numpy().astype(np.int64) - 1
    size = np.bincount(doc, minlength=len(number))
    split = rng.random(len(number)) < SPLIT_TIMESTAMP_SHARE
    first = np.where(split & (size >= 4), rng.integers(1, np.maximum(size, 2)), size)
    second = np.where(rng.random(len(number)) < 0.3, first + rng.integers(1, np.maximum(size - first, 1) + 1), size)
    offset = (rank >= first[doc]).astype(np.int64) + (rank >= second[doc])
    stamp = START + (docs["minute"][doc] + offset).astype("timedelta64[m]")
    invoice_date = np.char.replace(np.datetime_as_string(stamp, unit="s"), "T", " ")

    customer = docs["customer"][doc]
    frame = pd.DataFrame(
        {
            "invoice_no": invoice_no[doc],
            "stock_code": items["code"][lines["item"]],
            "description": items["description"][lines["item"]],
            "quantity": lines["quantity"].astype(np.int64),
            "invoice_date": invoice_date.astype(object),
            "unit_price": lines["price"].astype(float),
            "customer_id": np.where(customer >= 0, customer_ids[np.maximum(customer, 0)], np.nan).astype(float),
            "country": COUNTRY_NAMES[docs["country"][doc]],
        }
    )
    frame = frame.iloc[np.lexsort((rank, number[doc]))].reset_index(drop=True)
    return frame


# --------------------------------------------------------------------------------------------
# database


def invoice_lines_table(metadata: sa.MetaData | None = None) -> sa.Table:
    """The export's table: text, float and integer columns only, as a raw export would land."""
    return sa.Table(
        TABLE,
        metadata if metadata is not None else sa.MetaData(),
        sa.Column("invoice_no", sa.String(16), nullable=False),
        sa.Column("stock_code", sa.String(32), nullable=False),
        sa.Column("description", sa.String(255)),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("invoice_date", sa.String(19), nullable=False),  # naive Europe/London time
        sa.Column("unit_price", sa.Double),
        sa.Column("customer_id", sa.Double),  # 17850.0; null for a guest
        sa.Column("country", sa.String(64)),
        mysql_charset="utf8mb4",
    )


def write_invoice_lines(engine: sa.Engine, frame: pd.DataFrame, *, chunk_rows: int = 20_000) -> int:
    """(Re)create ``invoice_lines`` on ``engine`` and insert ``frame`` in chunks; returns the row count."""
    table = invoice_lines_table()
    values = frame.loc[:, list(COLUMNS)].astype(object)
    values = values.where(frame.loc[:, list(COLUMNS)].notna(), None)  # NaN ids become NULL, not NaN
    with engine.begin() as conn:
        table.drop(conn, checkfirst=True)
        table.create(conn)
        for start in range(0, len(values), chunk_rows):
            conn.execute(table.insert(), values.iloc[start : start + chunk_rows].to_dict("records"))
    return len(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the flat invoice-line export and write it to a database.")
    parser.add_argument("--url", required=True, help="SQLAlchemy URL, e.g. sqlite:///data/invoices.db")
    parser.add_argument("--invoices", type=int, default=DEFAULT_INVOICES)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    frame = generate(args.invoices, seed=args.seed)
    generated = time.perf_counter() - started
    engine = sa.create_engine(args.url)
    try:
        rows = write_invoice_lines(engine, frame)
    finally:
        engine.dispose()
    print(f"generated in {generated:.1f}s, written in {time.perf_counter() - started - generated:.1f}s")
    print(f"{TABLE}: {rows} lines, {frame['invoice_no'].nunique()} invoices, "
          f"{frame['customer_id'].nunique()} customers")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
