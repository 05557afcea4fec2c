-- Report: total amount per user per day (successful transactions).
-- sluice: partition_by = transaction_date
-- sluice: key = user_id, transaction_date
SELECT user_key,
       user_id,
       transaction_date,
       SUM(amount) AS total_amount,
       COUNT(*) AS transaction_count
FROM fact_sales
GROUP BY user_key, user_id, transaction_date
