-- Sales: successful transactions only, one row per transaction.
--
-- amount_category: Low below 1,000, Medium from 1,000 to below 3,000, High from
-- 3,000. transaction_date is the UTC day of transaction_time.
-- Users and merchants are LEFT JOINed so that a transaction whose user or merchant
-- is missing is not silently lost: the not_null checks on the keys catch it.
-- sluice: partition_by = transaction_date
-- sluice: key = transaction_id
SELECT t.transaction_id,
       u.user_key,
       m.merchant_key,
       t.user_id,
       t.merchant_id,
       t.amount,
       CASE
           WHEN t.amount < 1000 THEN 'Low'
           WHEN t.amount < 3000 THEN 'Medium'
           ELSE 'High'
       END AS amount_category,
       t.transaction_time,
       CAST(t.transaction_time AS DATE) AS transaction_date
FROM transactions AS t
LEFT JOIN dim_users AS u ON u.user_id = t.user_id
LEFT JOIN dim_merchants AS m ON m.merchant_id = t.merchant_id
WHERE t.status = 'SUCCESS'
