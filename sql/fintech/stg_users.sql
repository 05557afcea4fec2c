-- Staging: the current state of each user.
--
-- The users source is a MongoDB collection whose documents carry no timestamp, so
-- it is captured by snapshot diff: the lake table `users` is its change table,
-- one row per key that changed on a day (`_op` insert / update / delete,
-- `_change_date`, `_version` = that day as YYYYMMDD, `_is_deleted` = 1 for a
-- delete, which carries the last known values). The current state is the latest
-- change of each key, without the keys whose latest change is a delete: dedup
-- first, then drop the deletes (filtering deletes first would bring back the
-- version before the delete).
-- sluice: key = user_id
SELECT user_id,
       first_name,
       last_name,
       occupation,
       state,
       first_seen_date,
       last_changed_date
FROM (
    SELECT CAST("_Uid" AS VARCHAR) AS user_id,
           TRIM("firstName") AS first_name,
           TRIM("lastName") AS last_name,
           TRIM(occupation) AS occupation,
           TRIM(state) AS state,
           -- The day the nightly diff first saw the user (the first run's day for
           -- users that existed before it) and the day of its latest change.
           MIN("_change_date") OVER (PARTITION BY "_Uid") AS first_seen_date,
           "_change_date" AS last_changed_date,
           "_is_deleted"
    FROM users
    QUALIFY ROW_NUMBER() OVER (PARTITION BY "_Uid" ORDER BY "_version" DESC) = 1
) AS latest
WHERE "_is_deleted" = 0
