-- A typed job has no upload: its input_audio_id is NULL (it was '' before).
-- SQLite cannot drop a NOT NULL in place: the table is rebuilt (no other
-- table refers to it), with the same columns, order and indexes.
CREATE TABLE voice_jobs_new (
    id TEXT PRIMARY KEY NOT NULL,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    status TEXT NOT NULL,
    stage TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    input_audio_id TEXT,
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
    finished_at BIGINT,
    deferrals BIGINT NOT NULL DEFAULT 0,
    memories TEXT,
    callback_status TEXT,
    callback_attempts BIGINT NOT NULL DEFAULT 0,
    callback_last_status BIGINT
);
INSERT INTO voice_jobs_new (
    id, session_id, status, stage, attempts, input_audio_id, transcript, reply_text,
    reply_audio_id, degraded, error_code, error_message, queue_wait_ms, stt_ms, memory_ms,
    llm_ms, tts_ms, total_ms, idempotency_key, request_id, callback_url, created_at,
    updated_at, started_at, finished_at, deferrals, memories, callback_status,
    callback_attempts, callback_last_status
)
SELECT
    id, session_id, status, stage, attempts, NULLIF(input_audio_id, ''), transcript, reply_text,
    reply_audio_id, degraded, error_code, error_message, queue_wait_ms, stt_ms, memory_ms,
    llm_ms, tts_ms, total_ms, idempotency_key, request_id, callback_url, created_at,
    updated_at, started_at, finished_at, deferrals, memories, callback_status,
    callback_attempts, callback_last_status
FROM voice_jobs;
DROP TABLE voice_jobs;
ALTER TABLE voice_jobs_new RENAME TO voice_jobs;
CREATE UNIQUE INDEX jobs_idempotency_idx ON voice_jobs (session_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_status_idx ON voice_jobs (status, updated_at);
CREATE INDEX jobs_session_idx ON voice_jobs (session_id);
