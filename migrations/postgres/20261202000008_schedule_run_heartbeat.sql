-- A run in progress proves it is alive: its process writes alive_at every
-- few seconds. A run still 'running' whose alive_at stopped moving belonged
-- to a process that died; it is recorded as 'abandoned'.
ALTER TABLE schedule_runs ADD COLUMN alive_at BIGINT;
