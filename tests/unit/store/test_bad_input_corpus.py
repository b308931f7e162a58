"""The bad-input corpus (tests/support/bad_input): every case gets exactly the outcome it states.

Row cases are validated together in one run (each appends its own fresh rows, see cases.py) and
judged one by one; the run must quarantine exactly the rows the cases name plus their children,
nothing else. Table cases run alone on the tables they name.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from bad_input.cases import CASES, NOW, ROW_CASES, TABLE_CASES, Accepted, Quarantined, Store, TableFails

from remarketing.markets import load_markets
from remarketing.store.schema import CANONICAL_TABLES
from remarketing.store.validation.results import FeedBroken, ValidationPolicy
from remarketing.store.validation.run import validate_store


def _read(path: str | None) -> list[dict]:
    return pq.read_table(path).to_pylist() if path else []


def _personal(store: Store) -> list[str]:
    """Emails and names of the store: none may appear in messages, XCom or the report."""
    values = set()
    for table, columns in (("customers", ("email", "first_name", "last_name")), ("carts", ("email",))):
        for row in Store().rows(table) + store.rows(table):
            values.update(str(row[c]) for c in columns if row.get(c) and len(str(row[c])) > 3)
    return sorted(values)


class Run:
    def __init__(self, store: Store, validation, out: Path):
        self.store = store
        self.validation = validation
        self.out = out
        self.clean = {t: _read(v.clean_path) for t, v in validation.tables.items()}
        self.quarantine = {t: _read(v.quarantine_path) for t, v in validation.tables.items()}

    def clean_rows(self, table: str, key) -> list[dict]:
        name = CANONICAL_TABLES[table].key
        return [r for r in self.clean[table] if r[name] == key]

    def quarantined_rows(self, table: str, key) -> list[dict]:
        name = CANONICAL_TABLES[table].key
        return [r for r in self.quarantine[table] if r[name] == key]


@pytest.fixture(scope="module")
def row_run(tmp_path_factory) -> tuple[Run, dict]:
    store = Store()
    targets = {case.name: case.mutate(store) for case in ROW_CASES}
    folder = tmp_path_factory.mktemp("corpus")
    validation = validate_store(
        store.write(folder / "snapshots"),
        markets=load_markets(),
        out_dir=folder / "out",
        run_id="corpus",
        now=NOW,
        policy=ValidationPolicy(max_bad_share=1.0),  # many cases share one run; the threshold is a table case
    )
    return Run(store, validation, folder / "out"), targets


def _check_quarantined(run: Run, case, target) -> None:
    outcome: Quarantined = case.outcome
    assert target.keys, f"{case.name}: the case made no rows"
    for key in target.keys:
        rows = run.quarantined_rows(target.table, key)
        assert rows, f"{case.name}: {target.table} {key} not quarantined"
        assert not run.clean_rows(target.table, key), f"{case.name}: {target.table} {key} also clean"
        for row in rows:
            assert outcome.reason in row["reason"], f"{case.name}: reason {row['reason']!r}"
            assert outcome.expectation in row["expectation"], f"{case.name}: expectation {row['expectation']!r}"
            assert row["column"] == outcome.column, f"{case.name}: column {row['column']!r}"
    validated = set(run.validation.tables)
    children = run.store.children(target.table, [k for k in target.keys if k is not None])
    children = {table: keys for table, keys in children.items() if table in validated}
    assert set(children) == set(outcome.cascade) & validated, f"{case.name}: children in {sorted(children)}"
    for table, keys in children.items():
        for key in keys:
            rows = run.quarantined_rows(table, key)
            assert rows and all("parent" in r["reason"] for r in rows), f"{case.name}: child {table} {key}: {rows}"


def _check_accepted(run: Run, case, target) -> None:
    outcome: Accepted = case.outcome
    result = run.validation.tables[target.table]
    assert result.status == "ok", f"{case.name}: {result.failure}"
    if outcome.targets_quarantined:
        assert target.keys and all(run.quarantined_rows(target.table, k) for k in target.keys)
        return
    for key in target.keys:
        rows = run.clean_rows(target.table, key)
        assert len(rows) == 1, f"{case.name}: {target.table} {key} not clean: {run.quarantined_rows(target.table, key)}"
        if outcome.column is not None:
            got, want = rows[0][outcome.column], outcome.expected()
            if isinstance(want, float) and math.isnan(want):
                assert math.isnan(got)
            else:
                assert got == want, f"{case.name}: {outcome.column} is {got!r}, expected {want!r}"
        if outcome.note is not None:
            noted = next(e for e in result.expectations if e.name == outcome.note)
            assert not noted.success and key in noted.example_keys, f"{case.name}: not noted by {outcome.note}"


@pytest.mark.parametrize("case", ROW_CASES, ids=[c.name for c in ROW_CASES])
def test_row_case(case, row_run):
    run, targets = row_run
    target = targets[case.name]
    if isinstance(case.outcome, Quarantined):
        _check_quarantined(run, case, target)
    else:
        _check_accepted(run, case, target)


def test_row_run_quarantines_exactly_the_cases_rows(row_run):
    """Nothing else is quarantined (the base store is clean), and nothing is lost."""
    run, targets = row_run
    expected: dict[str, Counter] = {t: Counter() for t in CANONICAL_TABLES}
    for case in ROW_CASES:
        target = targets[case.name]
        if isinstance(case.outcome, Quarantined) or case.outcome.targets_quarantined:
            for key in target.keys:
                expected[target.table][key] += len(
                    [r for r in run.store.rows(target.table) if r[CANONICAL_TABLES[target.table].key] == key]
                )
            for table, keys in run.store.children(target.table, [k for k in target.keys if k is not None]).items():
                expected[table].update(keys)
    for table, result in run.validation.tables.items():
        key = CANONICAL_TABLES[table].key
        got = Counter(r[key] for r in run.quarantine[table])
        assert got == expected[table], f"{table}: unexpected {got - expected[table]}, missing {expected[table] - got}"
        assert result.extracted == result.clean + result.quarantined == run.store.tables[table].num_rows
        assert len(run.clean[table]) == result.clean and len(run.quarantine[table]) == result.quarantined


@pytest.mark.parametrize("case", TABLE_CASES, ids=[c.name for c in TABLE_CASES])
def test_table_case(case, tmp_path):
    store = Store()
    target = case.mutate(store)
    snapshots = store.write(tmp_path / "snapshots", case.tables)
    kwargs = dict(markets=load_markets(), out_dir=tmp_path / "out", run_id=f"corpus-{case.name}", now=NOW)
    policy = ValidationPolicy(**case.policy)
    if isinstance(case.outcome, TableFails):
        with pytest.raises(FeedBroken) as caught:
            validate_store(snapshots, policy=policy, **kwargs)
        broken = caught.value
        assert broken.table == target.table
        assert case.outcome.expectation in broken.expectation, str(broken)
        assert case.outcome.message in str(broken)
        assert len(broken.example_keys) <= 5
        assert bool(broken.example_keys) == case.outcome.with_keys, str(broken)
        assert not [p for p in _personal(store) if p in str(broken)]
        assert (tmp_path / "out" / "report.html").exists(), "the report is written even when the feed is broken"
        assert broken.validation is not None and broken.validation.tables[target.table].status == "failed"
        return
    run = Run(store, validate_store(snapshots, policy=policy, **kwargs), tmp_path / "out")
    if isinstance(case.outcome, Quarantined):
        _check_quarantined(run, case, target)
        others = [r for r in run.quarantine[target.table] if r[store.key(target.table)] not in target.keys]
        assert not others, f"{case.name}: also quarantined {others}"
    else:
        _check_accepted(run, case, target)
        if not case.outcome.targets_quarantined:
            assert run.validation.tables[target.table].quarantined == 0


def test_corpus_covers_thirty_kinds_of_bad_input():
    assert len({case.kind for case in CASES}) >= 30
    assert len({case.name for case in CASES}) == len(CASES)
    outcomes = Counter(type(case.outcome).__name__ for case in CASES)
    assert outcomes["Quarantined"] >= 15 and outcomes["TableFails"] >= 8 and outcomes["Accepted"] >= 8


def test_no_personal_data_in_summary_xcom_or_report(row_run):
    run, _ = row_run
    report = (run.out / "report.html").read_text(encoding="utf-8")
    texts = {
        "summary": run.validation.summary_table(),
        "xcom": json.dumps(run.validation.to_xcom(), ensure_ascii=False),
        "report": report,
    }
    for name, text in texts.items():
        leaked = [value for value in _personal(run.store) if re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text)]
        assert not leaked, f"{name} shows personal data: {leaked[:3]}"
