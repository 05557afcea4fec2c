-- Staging: the latest snapshot of each user.
--
-- The users source is a MongoDB collection copied whole every night into the
-- snapshot_date partition of the lake table `users` (snapshot capture), so a user
-- appears once per night: keep the newest snapshot, then the newest update.
-- sluice: key = user_id
SELECT CAST(user_id AS VARCHAR) AS user_id,
       TRIM(first_name) AS first_name,
       TRIM(last_name) AS last_name,
       LOWER(TRIM(email)) AS email,
       phone,
       created_at,
       updated_at,
       snapshot_date
FROM users
QUALIFY ROW_NUMBER() OVER (
    PARTITION BY user_id
    ORDER BY snapshot_date DESC, updated_at DESC
) = 1
