-- A turn in which the person spoke of ending their life or harming
-- themselves is marked 'crisis' (NULL: an ordinary turn), with the crisis
-- resource its reply carries (JSON {"text", "url"}), so redelivery and the
-- job JSON keep both whatever the configuration says later.
ALTER TABLE voice_jobs ADD COLUMN safety TEXT;
ALTER TABLE voice_jobs ADD COLUMN safety_resource TEXT;
