-- Canonical `carts` for the remarketing extract. Adapt the FROM and expressions to your
-- shop's schema; keep the column names. updated_at must be UTC. Do not add a WHERE on
-- updated_at: the extract wraps this query with its watermark window.
SELECT cart_id,
       customer_id,
       email,
       market,
       currency,
       status,
       order_id,
       created_at,
       updated_at
FROM carts
