-- One row per merchant, with a surrogate key (hash of the natural key).
-- sluice: key = merchant_key
SELECT md5(CONCAT('merchant:', CAST(merchant_id AS VARCHAR))) AS merchant_key,
       merchant_id,
       name AS merchant_name,
       category,
       created_at
FROM merchants
QUALIFY ROW_NUMBER() OVER (PARTITION BY merchant_id ORDER BY updated_at DESC) = 1
