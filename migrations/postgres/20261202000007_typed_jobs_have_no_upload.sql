-- A typed job has no upload: its input_audio_id is NULL (it was '' before).
ALTER TABLE voice_jobs ALTER COLUMN input_audio_id DROP NOT NULL;
UPDATE voice_jobs SET input_audio_id = NULL WHERE input_audio_id = '';
