-- Users dimension: one row per live user, with a surrogate key (hash of the
-- natural key `_Uid`, stable across rebuilds).
-- sluice: key = user_key
SELECT md5(CONCAT('user:', user_id)) AS user_key,
       user_id,
       CONCAT(first_name, ' ', last_name) AS full_name,
       occupation,
       state,
       first_seen_date
FROM stg_users
