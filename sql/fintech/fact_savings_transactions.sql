-- Savings transactions at transaction grain, with keys to the plan and the user.
-- Deposits are positive and withdrawals negative in signed_amount.
-- The transactions stream in day order from stg_savings_transaction through the
-- joins (the dimensions are the joins' build side): no sort before writing.
-- sluice: partition_by = transaction_date
-- In ClickHouse one partition per month: a year of days is 12 swaps, not 365.
-- sluice: clickhouse_partition = month
-- sluice: key = transaction_id
SELECT t.transaction_id,
       p.plan_key,
       u.user_key,
       t.amount,
       CASE t.side WHEN 'withdrawal' THEN -t.amount ELSE t.amount END AS signed_amount,
       t.currency,
       t.side,
       t.transaction_time,
       t.transaction_date
FROM stg_savings_transaction AS t
LEFT JOIN dim_savings_plan AS p ON p.plan_id = t.plan_id
LEFT JOIN dim_users AS u ON u.user_id = t.user_id
