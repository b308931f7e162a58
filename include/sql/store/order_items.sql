-- Canonical `order_items` for the remarketing extract. Adapt the FROM and expressions to your
-- shop's schema; keep the column names. updated_at must be UTC. Do not add a WHERE on
-- updated_at: the extract wraps this query with its watermark window.
SELECT order_item_id,
       order_id,
       product_id,
       quantity,
       unit_price,
       discount_amount,
       updated_at
FROM order_items
