-- Second database on the compose PostgreSQL server: the remarketing state DB
-- (Airflow connection remarketing_db). The Airflow metadata DB "airflow" is created by the
-- postgres image itself from POSTGRES_DB.
--
-- The postgres image runs the files in /docker-entrypoint-initdb.d/ (mounted from
-- docker/postgres-init/ by docker-compose.yaml) as POSTGRES_USER ("airflow", a superuser), in
-- name order, and ONLY when the data directory is empty, i.e. on the first start of a fresh
-- postgres-db-volume. To re-run it: docker compose down --volumes (this deletes all data).
--
-- The creating role (airflow) owns the database. Tables are created by the project's own schema
-- setup, not here.
CREATE DATABASE remarketing
    WITH ENCODING 'UTF8'
    TEMPLATE template0;

COMMENT ON DATABASE remarketing IS 'E-commerce email remarketing state (Airflow connection remarketing_db)';
