-- Canonical `products` for the remarketing extract. Adapt the FROM and expressions to your
-- shop's schema; keep the column names. updated_at must be UTC. Do not add a WHERE on
-- updated_at: the extract wraps this query with its watermark window.
SELECT product_id,
       sku,
       category,
       names,
       price,
       currency,
       image_url,
       product_url,
       active,
       updated_at
FROM products
