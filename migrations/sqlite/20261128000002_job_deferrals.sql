-- Attempts that do not count against the attempt limit: runs put off because
-- a provider's circuit breaker was open, and attempts before an operator
-- revived the job.
ALTER TABLE voice_jobs ADD COLUMN deferrals BIGINT NOT NULL DEFAULT 0;
