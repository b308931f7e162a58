"""The Assets that chain the daily DAGs. Imported at DAG parse time: airflow.sdk only.

    store_snapshot (daily) --STORE_SNAPSHOT--> lifecycle_segments --CUSTOMER_PROFILES--> market_campaign

Producer and consumer import the same object, so a renamed Asset renames both ends. The names
are what the metadata DB knows them by (the Asset graph, event history): changing one starts a
new, empty Asset there, and the consumer waits for its first event.
"""

from __future__ import annotations

from airflow.sdk import Asset

# Published by store_snapshot's `summarize` once every requested table is snapshotted and validated.
STORE_SNAPSHOT = Asset("store_snapshot")
# Published by lifecycle_segments' `build_profiles` once the profiles and stage history are upserted.
CUSTOMER_PROFILES = Asset("customer_profiles")
