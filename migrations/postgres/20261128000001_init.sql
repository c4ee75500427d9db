-- Rose's rows on the scaled deployment (PostgreSQL). Timestamps are unix milliseconds.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT,
    created_at BIGINT NOT NULL,
    last_active_at BIGINT NOT NULL
);
CREATE INDEX sessions_user_idx ON sessions (user_id);
CREATE INDEX sessions_active_idx ON sessions (last_active_at);

-- Uploads and replies. `bytes` is NULL once the retention period has erased it.
CREATE TABLE audio (
    id TEXT PRIMARY KEY NOT NULL,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    mime TEXT NOT NULL,
    bytes BYTEA,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expired_at BIGINT
);
CREATE INDEX audio_session_idx ON audio (session_id);
CREATE INDEX audio_created_idx ON audio (created_at);

-- Voice jobs ("voice_jobs": on SQLite the queue's own table is "Jobs", and SQLite
-- table names ignore case). transcript / reply_text / reply_audio_id are the stage checkpoints.
CREATE TABLE voice_jobs (
    id TEXT PRIMARY KEY NOT NULL,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    status TEXT NOT NULL,
    stage TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    input_audio_id TEXT NOT NULL,
    transcript TEXT,
    reply_text TEXT,
    reply_audio_id TEXT,
    degraded TEXT NOT NULL DEFAULT '[]',
    error_code TEXT,
    error_message TEXT,
    queue_wait_ms BIGINT,
    stt_ms BIGINT,
    memory_ms BIGINT,
    llm_ms BIGINT,
    tts_ms BIGINT,
    total_ms BIGINT,
    idempotency_key TEXT,
    request_id TEXT,
    callback_url TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT
);
CREATE UNIQUE INDEX jobs_idempotency_idx ON voice_jobs (session_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_status_idx ON voice_jobs (status, updated_at);
CREATE INDEX jobs_session_idx ON voice_jobs (session_id);

-- What was said. One user and one assistant turn per job at most.
CREATE TABLE turns (
    id TEXT PRIMARY KEY NOT NULL,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    job_id TEXT,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX turns_job_role_idx ON turns (job_id, role) WHERE job_id IS NOT NULL;
CREATE INDEX turns_session_idx ON turns (session_id, created_at);
