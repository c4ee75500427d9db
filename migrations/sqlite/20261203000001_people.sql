-- A person's profile: a few short lines Rose always knows (name, who they
-- are grieving, dates, what helps, what to avoid), per owner.
CREATE TABLE profile_lines (
    id TEXT PRIMARY KEY NOT NULL,
    owner TEXT NOT NULL,
    field TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    source_job TEXT
);
CREATE INDEX profile_lines_owner_idx ON profile_lines (owner, created_at);

-- What a person asked Rose to forget, so extraction never learns it again:
-- a SHA-256 of the normalised text (never the text), and the job it was
-- learnt from (its words are never extracted again).
CREATE TABLE forgotten (
    owner TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    source_job TEXT,
    forgotten_at BIGINT NOT NULL,
    PRIMARY KEY (owner, fingerprint)
);
CREATE INDEX forgotten_job_idx ON forgotten (owner, source_job);
CREATE INDEX sessions_user_created_idx ON sessions (user_id, created_at);
