-- Canonical `customers` for the remarketing extract. Adapt the FROM and expressions to your
-- shop's schema; keep the column names. updated_at must be UTC. Do not add a WHERE on
-- updated_at: the extract wraps this query with its watermark window.
SELECT customer_id,
       email,
       first_name,
       last_name,
       locale,
       country,
       region,
       market,
       time_zone,
       marketing_consent,
       registered_at,
       updated_at
FROM customers
