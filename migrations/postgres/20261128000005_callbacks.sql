-- Callback delivery state, shown in the job JSON as `callback`:
-- pending (not yet tried or retrying), delivered, exhausted (retries used up),
-- gone (the receiver answered 410).
ALTER TABLE voice_jobs ADD COLUMN callback_status TEXT;
ALTER TABLE voice_jobs ADD COLUMN callback_attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE voice_jobs ADD COLUMN callback_last_status BIGINT;
