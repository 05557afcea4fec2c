-- Staging: savings transactions, latest version of each, soft-deleted removed.
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
QUALIFY ROW_NUMBER() OVER (PARTITION BY transaction_id ORDER BY updated_at DESC) = 1
