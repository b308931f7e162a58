-- Canonical `orders` from a flat invoice-line export: one order per invoice number.
-- Order id: the invoice number's digits; a credit note ("C" prefix) adds 10,000,000,000 so it
-- can never collide with an invoice (the big constant also makes PostgreSQL compute in bigint).
-- The order's time is its first line's, updated_at its last line's. Timestamps are the export's
-- naive local time. See README.md.
SELECT CASE WHEN SUBSTR(invoice_no, 1, 1) = 'C'
            THEN CAST(SUBSTR(invoice_no, 2) AS INTEGER) + 10000000000
            ELSE CAST(invoice_no AS INTEGER)
       END AS order_id,
       CAST(MAX(customer_id) AS INTEGER) AS customer_id,
       NULL AS market,
       'GBP' AS currency,
       CASE WHEN SUBSTR(invoice_no, 1, 1) = 'C' THEN 'credit_note' ELSE 'delivered' END AS status,
       ROUND(CAST(SUM(quantity * unit_price) AS DECIMAL(18, 4)), 2) AS total_amount,
       0 AS discount_amount,
       NULL AS coupon_code,
       MIN(invoice_date) AS placed_at,
       MAX(invoice_date) AS updated_at,
       NULL AS email,
       MAX(country) AS country,
       CAST(NULL AS INTEGER) AS original_order_id
FROM invoice_lines
GROUP BY invoice_no
