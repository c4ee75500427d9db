-- One row per maintenance run. A scheduled run names the tick it belongs
-- to (scheduled_for, unix ms); the unique index makes a tick run once across
-- every scheduler replica. Manual runs have no tick.
CREATE TABLE schedule_runs (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    scheduled_for BIGINT,
    triggered_by TEXT NOT NULL,
    runner TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    outcome TEXT NOT NULL,
    counts TEXT NOT NULL DEFAULT '{}',
    detail TEXT
);
CREATE UNIQUE INDEX schedule_runs_tick_idx ON schedule_runs (name, scheduled_for) WHERE scheduled_for IS NOT NULL;
CREATE INDEX schedule_runs_name_idx ON schedule_runs (name, started_at);
