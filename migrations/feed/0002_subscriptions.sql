-- Subscriptions (SPEC "Push delivery"): each one's definition, its durable cursor and the state of
-- its retries. The cursor is the last feed position acknowledged (or passed over by the filter):
-- delivery resumes after it. `generation` changes with every replacement, so that a worker still
-- running an older definition can neither move the cursor nor record its errors.
CREATE TABLE pubsubpull.subscription (
    name text PRIMARY KEY,
    url text NOT NULL,
    tables text[] NOT NULL,
    operations text[] NOT NULL,
    batch_size int NOT NULL,
    secret text,
    paused boolean NOT NULL DEFAULT false,
    generation bigint NOT NULL DEFAULT 1,
    cursor bigint NOT NULL,
    delivered_at timestamptz,
    attempts int NOT NULL DEFAULT 0,
    last_error text,
    last_error_at timestamptz,
    next_attempt_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
