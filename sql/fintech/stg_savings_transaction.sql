-- Staging: savings transactions, latest version of each, soft-deleted removed.
-- The latest version is the first row of each transaction_id in the order
-- (transaction_id, updated_at DESC): the row whose predecessor has another id.
-- Same result as ROW_NUMBER() OVER (PARTITION BY transaction_id ORDER BY
-- updated_at DESC) = 1, in half the time in DataFusion on 3M rows (2.7 s vs 5.6 s,
-- `sluice query`, 2026-12-04): one sort, no per-partition window state.
-- sluice: key = transaction_id
SELECT transaction_id,
       plan_id,
       CAST(user_id AS VARCHAR) AS user_id,
       CAST(amount AS DECIMAL(18, 2)) AS amount,
       UPPER(currency) AS currency,
       LOWER(side) AS side,
       created_at AS transaction_time,
       updated_at
FROM savings_transaction
WHERE deleted_at IS NULL
QUALIFY LAG(transaction_id) OVER (ORDER BY transaction_id, updated_at DESC) IS DISTINCT FROM transaction_id
