-- Canonical `cart_items` for the remarketing extract. Adapt the FROM and expressions to your
-- shop's schema; keep the column names. updated_at must be UTC. Do not add a WHERE on
-- updated_at: the extract wraps this query with its watermark window.
SELECT cart_item_id,
       cart_id,
       product_id,
       quantity,
       unit_price,
       currency,
       added_at,
       updated_at
FROM cart_items
