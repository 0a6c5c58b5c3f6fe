-- Pruning finds the rows before its cutoff by time, whatever their ids: rows dated ahead (a
-- clock that ran fast, then was set back) no longer stop it at the low end of the ids.
CREATE INDEX request_log_at ON request_log (at);
