-- One day of changes for the e-wallet source: 100 new transactions, 50 pending ones
-- settled, one new user. Run it between two `sluice run`s.
INSERT INTO users
SELECT max(user_id) + 1, 'New User', 'new' || (max(user_id) + 1) || '@example.com', 'Lagos', now(), now()
FROM users;

INSERT INTO transactions
SELECT m.base + g, 1 + g % 2000, 1 + g % 200, 100 + g, 'SUCCESS', now(), now()
FROM generate_series(1, 100) g, (SELECT max(transaction_id) AS base FROM transactions) m;

UPDATE transactions SET status = 'SUCCESS', updated_at = now()
WHERE transaction_id IN (
    SELECT transaction_id FROM transactions WHERE status = 'PENDING' ORDER BY transaction_id LIMIT 50);
