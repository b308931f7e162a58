"""DagBag integrity, in the spirit of the Astro CLI template: every DAG file imports cleanly and
follows the project's rules (tags, owner, retries, docs, no heavy imports at parse time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((REPO / "dags").glob("*.py"))
# Modules a DAG file must not import at top level: the scheduler parses DAG files constantly.
HEAVY_MODULES = ("pandas", "numpy", "pyarrow", "great_expectations", "scipy", "sendgrid", "holidays", "babel")


@pytest.fixture(scope="module")
def dag_bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_there_are_dag_files():
    assert DAG_FILES, "dags/ holds no DAG file"


def test_no_import_errors(dag_bag):
    errors = {os.path.relpath(path, REPO): message.strip() for path, message in dag_bag.import_errors.items()}
    assert not errors, f"DAG import errors: {json.dumps(errors, indent=2)}"


def test_every_dag_file_defines_a_dag(dag_bag):
    files_with_dags = {Path(dag.fileloc).resolve() for dag in dag_bag.dags.values()}
    assert files_with_dags == {path.resolve() for path in DAG_FILES}


def test_dags_are_tagged_owned_and_documented(dag_bag):
    for dag_id, dag in dag_bag.dags.items():
        assert dag.tags and "remarketing" in dag.tags, f"{dag_id}: tag it 'remarketing' (plus what it does)"
        assert dag.doc_md and len(dag.doc_md) > 200, f"{dag_id}: doc_md must explain the DAG, its Params, its outcome"
        for name in dag.params:
            description = dag.params.get_param(name).description
            assert description, f"{dag_id}: Param {name!r} needs a description for the trigger form"
        for task in dag.tasks:
            assert task.owner == "remarketing", f"{dag_id}.{task.task_id}: owner is {task.owner!r}"


def test_every_task_retries_at_least_twice(dag_bag):
    """Every task here talks to a database or an API, so each gets retries (quick in tests)."""
    for dag_id, dag in dag_bag.dags.items():
        for task in dag.tasks:
            assert task.retries >= 2, f"{dag_id}.{task.task_id} has retries={task.retries}"


def test_dags_do_not_catch_up_on_history(dag_bag):
    for dag_id, dag in dag_bag.dags.items():
        assert dag.catchup is False, f"{dag_id}: catchup would replay every day since start_date"


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=[p.name for p in DAG_FILES])
def test_dag_file_has_no_heavy_top_level_imports(dag_file):
    """Parse a DAG file in a fresh interpreter after Airflow itself; list what it newly imported."""
    probe = (
        "import sys, runpy, json\n"
        "import airflow.sdk\n"
        "from airflow.sdk import Asset, Param, dag, task\n"
        "before = set(sys.modules)\n"
        f"runpy.run_path({str(dag_file)!r})\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=os.environ.copy())
    assert result.returncode == 0, result.stderr[-2000:]
    new_modules = json.loads(result.stdout.strip().splitlines()[-1])
    heavy = sorted({m.split(".")[0] for m in new_modules if m.split(".")[0] in HEAVY_MODULES})
    assert not heavy, f"{dag_file.name} imports {heavy} at parse time; import them inside tasks"


def asset_edges(dag_bag) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(producer DAG, Asset name) and (Asset name, consumer DAG) pairs, as the Asset graph shows them.

    Read from the serialized DAGs' dependencies: what the dag-processor stores and the UI draws.
    """
    from airflow.serialization.serialized_objects import DagSerialization

    produces, consumes = set(), set()
    for dag_id, dag in dag_bag.dags.items():
        for dep in DagSerialization.serialize_dag(dag)["dag_dependencies"]:
            if dep["dependency_type"] != "asset":
                continue
            name = json.loads(dep["dependency_id"])["name"]
            if dep["source"] == dag_id:
                produces.add((dag_id, name))
            if dep["target"] == dag_id:
                consumes.add((name, dag_id))
    return produces, consumes


def test_assets_chain_snapshot_profiles_and_campaigns(dag_bag):
    from remarketing.platform.assets import CUSTOMER_PROFILES, STORE_SNAPSHOT

    produces, consumes = asset_edges(dag_bag)
    assert ("store_snapshot", STORE_SNAPSHOT.name) in produces
    assert (STORE_SNAPSHOT.name, "lifecycle_segments") in consumes
    assert ("lifecycle_segments", CUSTOMER_PROFILES.name) in produces
    assert (CUSTOMER_PROFILES.name, "market_campaign") in consumes
    # The very objects of remarketing.platform.assets: producer outlets and consumer schedules cannot drift.
    outlets = {
        dag_id: [o for t in dag_bag.dags[dag_id].tasks for o in t.outlets]
        for dag_id in ("store_snapshot", "lifecycle_segments")
    }
    assert outlets == {"store_snapshot": [STORE_SNAPSHOT], "lifecycle_segments": [CUSTOMER_PROFILES]}
    assert dag_bag.dags["lifecycle_segments"].timetable.asset_condition == STORE_SNAPSHOT
    assert dag_bag.dags["market_campaign"].timetable.asset_condition == CUSTOMER_PROFILES


def test_every_asset_a_dag_waits_for_is_produced_by_a_dag(dag_bag):
    """A renamed outlet (or schedule) would leave its consumer waiting forever: fail here instead."""
    produces, consumes = asset_edges(dag_bag)
    produced = {name for _, name in produces}
    orphans = sorted((name, dag_id) for name, dag_id in consumes if name not in produced)
    assert not orphans, f"scheduled on Assets no DAG updates: {orphans}"


def test_only_the_snapshot_has_a_clock_in_the_chain(dag_bag):
    """The consumers run on their Asset alone (no AssetOrTimeSchedule cron): one run per fresh snapshot."""
    from airflow.sdk.definitions.timetables.assets import AssetTriggeredTimetable
    from airflow.sdk.definitions.timetables.trigger import CronTriggerTimetable

    assert isinstance(dag_bag.dags["store_snapshot"].timetable, CronTriggerTimetable)
    assert dag_bag.dags["store_snapshot"].schedule == "@daily"
    for dag_id in ("lifecycle_segments", "market_campaign"):
        timetable = dag_bag.dags[dag_id].timetable
        assert type(timetable) is AssetTriggeredTimetable, f"{dag_id}: {type(timetable).__name__}"
