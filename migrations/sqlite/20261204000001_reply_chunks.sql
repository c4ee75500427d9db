-- A reply spoken sentence by sentence: each synthesised sentence is stored
-- and announced as it is ready. `chunks` is the JSON list of those announced,
-- [{"index", "text", "audio_id"}] in index order ("audio_id" null for a
-- sentence the speech provider refused); it is each delivery's checkpoint, so a
-- job redelivered after its worker died resumes after its last chunk.
-- first_token_ms / first_audio_ms: from creation to the reply's first token
-- and to its first stored sentence.
ALTER TABLE voice_jobs ADD COLUMN chunks TEXT NOT NULL DEFAULT '[]';
ALTER TABLE voice_jobs ADD COLUMN first_token_ms BIGINT;
ALTER TABLE voice_jobs ADD COLUMN first_audio_ms BIGINT;
