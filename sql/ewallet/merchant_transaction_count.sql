-- Report: number of successful transactions per merchant (merchants without any
-- have 0).
-- sluice: key = merchant_id
SELECT m.merchant_key,
       m.merchant_id,
       m.merchant_name,
       m.category,
       COUNT(f.transaction_id) AS transaction_count
FROM dim_merchants AS m
LEFT JOIN fact_sales AS f ON f.merchant_key = m.merchant_key
GROUP BY m.merchant_key, m.merchant_id, m.merchant_name, m.category
