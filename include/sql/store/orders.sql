-- Canonical `orders` for the remarketing extract. Adapt the FROM and expressions to your
-- shop's schema; keep the column names. updated_at must be UTC. Do not add a WHERE on
-- updated_at: the extract wraps this query with its watermark window.
SELECT order_id,
       customer_id,
       market,
       currency,
       status,
       total_amount,
       discount_amount,
       coupon_code,
       placed_at,
       updated_at
FROM orders
