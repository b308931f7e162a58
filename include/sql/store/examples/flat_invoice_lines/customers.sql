-- Canonical `customers` from a flat invoice-line export: one customer per customer number
-- (a float in the export, 17850.0; lines without one are guest purchases).
-- country: the name on the customer's newest invoice; the project maps names to markets.
-- registered_at: the first invoice (the export has no sign-up date); updated_at: the newest.
-- No email, names or consent in the export: a real shop joins its customer records here.
-- See README.md.
SELECT c.customer_id,
       NULL AS email,
       NULL AS first_name,
       NULL AS last_name,
       NULL AS locale,
       latest.country,
       NULL AS region,
       NULL AS market,
       NULL AS time_zone,
       NULL AS marketing_consent,
       c.registered_at,
       c.updated_at
FROM (
    SELECT CAST(customer_id AS INTEGER) AS customer_id,
           MIN(invoice_date) AS registered_at,
           MAX(invoice_date) AS updated_at
    FROM invoice_lines
    WHERE customer_id IS NOT NULL
    GROUP BY customer_id
) c
JOIN (
    SELECT CAST(customer_id AS INTEGER) AS customer_id,
           country,
           ROW_NUMBER() OVER (
               PARTITION BY customer_id
               ORDER BY invoice_date DESC, invoice_no DESC, country
           ) AS newest
    FROM invoice_lines
    WHERE customer_id IS NOT NULL
) latest ON latest.customer_id = c.customer_id AND latest.newest = 1
