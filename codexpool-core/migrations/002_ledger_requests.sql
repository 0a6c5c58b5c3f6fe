-- A token-ledger row counts `requests` requests: 1 as written, more once a day is folded.
ALTER TABLE token_ledger ADD COLUMN requests INTEGER NOT NULL DEFAULT 1;
