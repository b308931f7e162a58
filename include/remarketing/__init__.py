"""E-commerce email remarketing on Airflow: the business logic behind the DAGs in dags/.

Modules depend downward only (DAGs -> runtime -> extract/snapshots/state/...); nothing here
imports Airflow at module level, so everything is testable without it.
"""
