-- Voice recordings and speech arrive compressed (Opus, MP3, AAC) or as PCM
-- that compresses poorly; PostgreSQL's pglz spent CPU on every upload for
-- next to nothing. Keep the bytes out of line and uncompressed.
ALTER TABLE audio ALTER COLUMN bytes SET STORAGE EXTERNAL;
