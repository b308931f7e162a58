-- Canonical `products` from a flat invoice-line export: one product per stock code that starts
-- with a digit (POST, M, D, BANK CHARGES, AMAZONFEE ... are postage, fees and adjustments).
-- product_id: the code's number in order of first sale, so new codes are appended and existing
-- ids stay put. Name and price: the newest sale line's (returns only if it was never sold).
-- names is JSON text {"en": "..."}; double quotes in a description become single quotes.
-- updated_at: the code's newest line. See README.md.
SELECT p.product_id,
       p.stock_code AS sku,
       NULL AS category,
       REPLACE('{"en": "#"}', '#', REPLACE(latest.description, '"', '''')) AS names,
       latest.unit_price AS price,
       'GBP' AS currency,
       NULL AS image_url,
       NULL AS product_url,
       1 AS active,
       p.last_sold AS updated_at
FROM (
    SELECT stock_code,
           ROW_NUMBER() OVER (ORDER BY MIN(invoice_date), stock_code) AS product_id,
           MAX(invoice_date) AS last_sold
    FROM invoice_lines
    WHERE SUBSTR(stock_code, 1, 1) BETWEEN '0' AND '9'
    GROUP BY stock_code
) p
JOIN (
    SELECT stock_code,
           description,
           unit_price,
           ROW_NUMBER() OVER (
               PARTITION BY stock_code
               ORDER BY CASE WHEN quantity > 0 THEN 0 ELSE 1 END,
                        invoice_date DESC, invoice_no DESC, unit_price DESC, description DESC
           ) AS newest
    FROM invoice_lines
) latest ON latest.stock_code = p.stock_code AND latest.newest = 1
