-- Savings plans dimension, joined to their user.
-- sluice: key = plan_key
SELECT md5(CONCAT('plan:', p.plan_id)) AS plan_key,
       p.plan_id,
       u.user_key,
       p.user_id,
       u.full_name AS user_full_name,
       p.plan_name,
       p.target_amount,
       p.frequency,
       p.status,
       p.start_date,
       p.end_date
FROM stg_savings_plan AS p
LEFT JOIN dim_users AS u ON u.user_id = p.user_id
