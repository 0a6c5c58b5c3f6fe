-- codexpool schema, version 1. Times are milliseconds since the Unix epoch (UTC).

CREATE TABLE accounts (
    id                 TEXT PRIMARY KEY,
    label              TEXT NOT NULL,
    email              TEXT,
    chatgpt_account_id TEXT,
    chatgpt_user_id    TEXT NOT NULL DEFAULT '',
    plan_type          TEXT,
    group_name         TEXT,
    tags               TEXT NOT NULL DEFAULT '[]',  -- JSON list of strings
    sort               INTEGER NOT NULL DEFAULT 0,
    note               TEXT,
    status             TEXT NOT NULL DEFAULT 'active'
                       CHECK (status IN ('active', 'disabled', 'needs_login', 'banned')),
    status_reason      TEXT,
    id_token           TEXT NOT NULL,
    access_token       TEXT NOT NULL,
    refresh_token      TEXT NOT NULL,
    access_expires_at  INTEGER,
    last_refresh_at    INTEGER,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    last_used_at       INTEGER
);

-- One row per sign-in: a re-import of the same account and user updates it.
CREATE UNIQUE INDEX accounts_identity ON accounts (chatgpt_account_id, chatgpt_user_id)
    WHERE chatgpt_account_id IS NOT NULL;

CREATE TABLE platform_keys (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    secret_hash      BLOB NOT NULL UNIQUE,  -- SHA-256 of the secret; the secret is never stored
    hint             TEXT NOT NULL,
    model            TEXT,
    allowed_models   TEXT NOT NULL DEFAULT '[]',
    allowed_groups   TEXT NOT NULL DEFAULT '[]',
    reasoning_effort TEXT,
    enabled          INTEGER NOT NULL DEFAULT 1,
    expires_at       INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    last_used_at     INTEGER
);

CREATE TABLE usage_windows (
    account_id     TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    kind           TEXT NOT NULL CHECK (kind IN ('five_hour', 'weekly')),
    used_percent   REAL NOT NULL,
    window_minutes INTEGER NOT NULL,
    resets_at      INTEGER,
    source         TEXT NOT NULL,
    observed_at    INTEGER NOT NULL,
    PRIMARY KEY (account_id, kind)
);

CREATE TABLE usage_credits (
    account_id  TEXT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    balance     REAL,
    has_credits INTEGER,
    unlimited   INTEGER
);

-- History outlives accounts and keys: no foreign keys here.
CREATE TABLE token_ledger (
    id               INTEGER PRIMARY KEY,
    at               INTEGER NOT NULL,
    key_id           TEXT,
    account_id       TEXT,
    model            TEXT NOT NULL,
    input_tokens     INTEGER NOT NULL,
    cached_tokens    INTEGER NOT NULL,
    output_tokens    INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    status           INTEGER NOT NULL
);
CREATE INDEX token_ledger_at ON token_ledger (at);

CREATE TABLE request_log (
    id             INTEGER PRIMARY KEY,
    request_id     TEXT NOT NULL,
    at             INTEGER NOT NULL,
    key_id         TEXT,
    accounts_tried TEXT NOT NULL DEFAULT '[]',
    account_id     TEXT,
    route          TEXT NOT NULL,
    model          TEXT,
    status         INTEGER NOT NULL,
    stream         INTEGER NOT NULL,
    latency_ms     INTEGER NOT NULL,
    ttfb_ms        INTEGER,
    tokens         TEXT,  -- JSON TokenCounts
    error_class    TEXT,
    fallback       INTEGER NOT NULL DEFAULT 0,
    body_preview   TEXT
);
CREATE INDEX request_log_key ON request_log (key_id, id);

CREATE TABLE login_sessions (
    state         TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    code_verifier TEXT NOT NULL,
    redirect_uri  TEXT NOT NULL,
    label         TEXT,
    group_name    TEXT,
    tags          TEXT NOT NULL DEFAULT '[]',
    note          TEXT,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    status        TEXT NOT NULL  -- JSON LoginStatus
);

-- Single-flight token refresh across processes.
CREATE TABLE refresh_leases (
    account_id TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
