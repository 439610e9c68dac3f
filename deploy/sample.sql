-- A sample table for the compose setup; the `track` service starts capturing it.
CREATE TABLE customers (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    email text,
    balance numeric(12, 2) NOT NULL DEFAULT 0
);
INSERT INTO customers (name, email, balance) VALUES ('Ann', 'ann@example.com', 12.50);
