-- The e-wallet source database: users, merchants and 50,000 transactions over the
-- last 30 days (dated relative to today, so ClickHouse's TTL keeps them).
-- Deterministic: every value is a function of the row number.
DROP TABLE IF EXISTS transactions, merchants, users;

CREATE TABLE users (
    user_id     bigint PRIMARY KEY,
    full_name   text NOT NULL,
    email       text NOT NULL,
    state       text,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE TABLE merchants (
    merchant_id bigint PRIMARY KEY,
    name        text NOT NULL,
    category    text NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE TABLE transactions (
    transaction_id   bigint PRIMARY KEY,
    user_id          bigint NOT NULL REFERENCES users,
    merchant_id      bigint NOT NULL REFERENCES merchants,
    amount           numeric(12, 2) NOT NULL,
    status           text NOT NULL CHECK (status IN ('SUCCESS', 'FAILED', 'PENDING')),
    transaction_time timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX ON transactions (updated_at);

INSERT INTO users
SELECT g,
       (ARRAY['Ada','Chidi','Ngozi','Tunde','Amaka','Bola','Emeka','Funmi'])[1 + g % 8] || ' ' ||
       (ARRAY['Obi','Okafor','Adeyemi','Balogun','Eze','Nwosu'])[1 + g % 6],
       'user' || g || '@example.com',
       (ARRAY['Lagos','Abuja','Kano','Oyo','Rivers'])[1 + g % 5],
       date_trunc('day', now()) - interval '60 days' + g * interval '30 minutes',
       date_trunc('day', now()) - interval '60 days' + g * interval '30 minutes'
FROM generate_series(1, 2000) g;

INSERT INTO merchants
SELECT g,
       'Merchant ' || g,
       (ARRAY['grocery','transport','airtime','utilities','fashion'])[1 + g % 5],
       date_trunc('day', now()) - interval '90 days' + g * interval '6 hours',
       date_trunc('day', now()) - interval '90 days' + g * interval '6 hours'
FROM generate_series(1, 200) g;

INSERT INTO transactions
SELECT g,
       1 + (g * 7919) % 2000,
       1 + (g * 104729) % 200,
       ((g * 7919) % 500000) / 100.0,
       CASE WHEN g % 10 = 0 THEN 'FAILED' WHEN g % 10 = 1 THEN 'PENDING' ELSE 'SUCCESS' END,
       date_trunc('day', now()) - interval '29 days' + g * interval '50 seconds',
       date_trunc('day', now()) - interval '29 days' + g * interval '50 seconds'
FROM generate_series(1::bigint, 50000) g;
