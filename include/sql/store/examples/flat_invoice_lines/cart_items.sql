-- Canonical `cart_items`: an invoice export has no carts. Every column, no rows (valid SQL on
-- SQLite, PostgreSQL and MariaDB: no FROM, no BIGINT cast).
SELECT CAST(NULL AS INTEGER) AS cart_item_id,
       CAST(NULL AS INTEGER) AS cart_id,
       CAST(NULL AS INTEGER) AS product_id,
       CAST(NULL AS INTEGER) AS quantity,
       CAST(NULL AS DECIMAL(12, 2)) AS unit_price,
       NULL AS currency,
       NULL AS added_at,
       NULL AS updated_at
WHERE 1 = 0
