-- What other processes' reloads follow: a counter every change to accounts, keys and usage
-- moves (request-log and ledger batches, the bulk of all commits, leave it alone).
CREATE TABLE pool_changes (n INTEGER NOT NULL);
INSERT INTO pool_changes (n) VALUES (0);
CREATE TRIGGER accounts_inserted AFTER INSERT ON accounts BEGIN UPDATE pool_changes SET n = n + 1; END;
CREATE TRIGGER accounts_updated AFTER UPDATE ON accounts BEGIN UPDATE pool_changes SET n = n + 1; END;
CREATE TRIGGER accounts_deleted AFTER DELETE ON accounts BEGIN UPDATE pool_changes SET n = n + 1; END;
CREATE TRIGGER keys_inserted AFTER INSERT ON platform_keys BEGIN UPDATE pool_changes SET n = n + 1; END;
CREATE TRIGGER keys_updated AFTER UPDATE ON platform_keys BEGIN UPDATE pool_changes SET n = n + 1; END;
CREATE TRIGGER keys_deleted AFTER DELETE ON platform_keys BEGIN UPDATE pool_changes SET n = n + 1; END;
CREATE TRIGGER windows_inserted AFTER INSERT ON usage_windows BEGIN UPDATE pool_changes SET n = n + 1; END;
CREATE TRIGGER windows_updated AFTER UPDATE ON usage_windows BEGIN UPDATE pool_changes SET n = n + 1; END;
CREATE TRIGGER windows_deleted AFTER DELETE ON usage_windows BEGIN UPDATE pool_changes SET n = n + 1; END;
CREATE TRIGGER credits_inserted AFTER INSERT ON usage_credits BEGIN UPDATE pool_changes SET n = n + 1; END;
CREATE TRIGGER credits_updated AFTER UPDATE ON usage_credits BEGIN UPDATE pool_changes SET n = n + 1; END;
CREATE TRIGGER credits_deleted AFTER DELETE ON usage_credits BEGIN UPDATE pool_changes SET n = n + 1; END;
