-- One row per e-wallet user, with a surrogate key.
--
-- The surrogate key is a hash of the natural key (as dbt's generate_surrogate_key
-- does): stable across nightly rebuilds, so facts loaded on different nights join.
-- sluice: key = user_key
SELECT md5(CONCAT('user:', CAST(user_id AS VARCHAR))) AS user_key,
       user_id,
       full_name,
       email,
       state,
       created_at
FROM users
-- The lake already holds the latest version of each user (merged by key); the
-- dedup keeps this model right even for a source read in snapshot mode.
QUALIFY ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY updated_at DESC) = 1
