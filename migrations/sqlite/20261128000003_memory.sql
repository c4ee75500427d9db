-- Long-term memories (the embedded store; with Qdrant they live there).
-- owner is the user_id, or "session:<id>" for a session without one.
CREATE TABLE memories (
    id TEXT PRIMARY KEY NOT NULL,
    owner TEXT NOT NULL,
    session_id TEXT NOT NULL,
    text TEXT NOT NULL,
    vector BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    last_recalled_at BIGINT NOT NULL,
    source_job TEXT
);
CREATE INDEX memories_owner_idx ON memories (owner, id);
CREATE INDEX memories_session_idx ON memories (session_id);

-- The rolling summary: everything up to summarized_until (a turn's
-- created_at) is folded into summary.
ALTER TABLE sessions ADD COLUMN summary TEXT;
ALTER TABLE sessions ADD COLUMN summarized_until BIGINT NOT NULL DEFAULT 0;

-- The memory stage's checkpoint: the facts recalled for this job (JSON).
ALTER TABLE voice_jobs ADD COLUMN memories TEXT;
