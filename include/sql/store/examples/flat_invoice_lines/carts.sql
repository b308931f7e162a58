-- Canonical `carts`: an invoice export has no carts. Every column, no rows (valid SQL on
-- SQLite, PostgreSQL and MariaDB: no FROM, no BIGINT cast).
SELECT CAST(NULL AS INTEGER) AS cart_id,
       CAST(NULL AS INTEGER) AS customer_id,
       NULL AS email,
       NULL AS market,
       NULL AS currency,
       NULL AS status,
       CAST(NULL AS INTEGER) AS order_id,
       NULL AS created_at,
       NULL AS updated_at
WHERE 1 = 0
