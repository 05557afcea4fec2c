-- Users dimension: one row per user, with a surrogate key (hash of the natural
-- key, stable across rebuilds).
-- sluice: key = user_key
SELECT md5(CONCAT('user:', user_id)) AS user_key,
       user_id,
       CONCAT(first_name, ' ', last_name) AS full_name,
       email,
       phone,
       created_at AS signed_up_at
FROM stg_users
