-- Staging: savings plans, latest version of each, soft-deleted ones removed.
-- sluice: key = plan_id
SELECT plan_id,
       CAST(user_id AS VARCHAR) AS user_id,
       plan_name,
       CAST(target_amount AS DECIMAL(18, 2)) AS target_amount,
       LOWER(frequency) AS frequency,
       LOWER(status) AS status,
       start_date,
       end_date,
       created_at,
       updated_at
FROM savings_plan
WHERE deleted_at IS NULL
QUALIFY ROW_NUMBER() OVER (PARTITION BY plan_id ORDER BY updated_at DESC) = 1
