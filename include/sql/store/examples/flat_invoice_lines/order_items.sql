-- Canonical `order_items` from a flat invoice-line export: one item per line.
-- order_item_id = order_id * 10000 + the line's number within its invoice (lines ordered by all
-- their columns, so the id does not depend on the database or the physical row order).
-- product_id: the product's number in order of first sale (as in products.sql); null for
-- postage, fees and adjustments (stock codes that do not start with a digit).
-- updated_at is the invoice's newest line time: a line added to an invoice later may renumber
-- its other lines, and then moves their updated_at too, so they are extracted again together.
-- See README.md.
SELECT l.order_id * 10000 + l.line_no AS order_item_id,
       l.order_id,
       p.product_id,
       l.quantity,
       l.unit_price,
       0 AS discount_amount,
       l.invoice_updated_at AS updated_at
FROM (
    SELECT CASE WHEN SUBSTR(invoice_no, 1, 1) = 'C'
                THEN CAST(SUBSTR(invoice_no, 2) AS INTEGER) + 10000000000
                ELSE CAST(invoice_no AS INTEGER)
           END AS order_id,
           stock_code,
           quantity,
           unit_price,
           ROW_NUMBER() OVER (
               PARTITION BY invoice_no
               ORDER BY stock_code, invoice_date, quantity, unit_price, description
           ) AS line_no,
           MAX(invoice_date) OVER (PARTITION BY invoice_no) AS invoice_updated_at
    FROM invoice_lines
) l
LEFT JOIN (
    SELECT stock_code,
           ROW_NUMBER() OVER (ORDER BY MIN(invoice_date), stock_code) AS product_id
    FROM invoice_lines
    WHERE SUBSTR(stock_code, 1, 1) BETWEEN '0' AND '9'
    GROUP BY stock_code
) p ON p.stock_code = l.stock_code
