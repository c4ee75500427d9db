//! What Rose keeps of a person across sessions, beside their sessions: the
//! profile lines she always knows, and what they asked her to forget. One
//! owner string names the person everywhere (`sessions.user_id`, memories,
//! profile): see [`crate::memory::owner_of`].
//!
//! A forgotten fact is kept as a SHA-256 of its normalised text (lower case,
//! letters and digits only, single spaces) and the job it was learnt from,
//! never as text: extraction asks [`PersonStore::is_forgotten`] before it
//! keeps anything, so a forgotten fact is not learnt again from the same
//! words (a redelivered or re-run extraction) nor stated again the same way.
//! Erasing the person erases these too.

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::StoreResult;
use super::sql::{PgStore, SqliteStore};
use crate::domain::{ProfileLine, Session, now_ms};

/// What erasing a person removed from the database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Erased {
    pub sessions: u64,
    pub profile_lines: u64,
}

/// A person's data beside their sessions.
#[async_trait]
pub trait PersonStore: Send + Sync {
    /// `owner`'s profile lines, oldest first (lines of the same millisecond
    /// in id order).
    async fn profile(&self, owner: &str) -> StoreResult<Vec<ProfileLine>>;
    /// Adds a profile line; returns its id.
    async fn add_profile_line(
        &self,
        owner: &str,
        field: &str,
        text: &str,
        source_job: Option<&str>,
    ) -> StoreResult<String>;
    /// Rewrites one of `owner`'s lines; false when `owner` has no such line.
    async fn update_profile_line(&self, owner: &str, id: &str, text: &str) -> StoreResult<bool>;
    /// Removes one of `owner`'s lines; false when `owner` has no such line.
    async fn delete_profile_line(&self, owner: &str, id: &str) -> StoreResult<bool>;
    /// Records that `owner` asked to forget `text` (learnt from `source_job`).
    async fn forget(&self, owner: &str, text: &str, source_job: Option<&str>) -> StoreResult<()>;
    /// Whether `owner` asked to forget `text`, or anything learnt from `job`.
    async fn is_forgotten(&self, owner: &str, text: &str, job: Option<&str>) -> StoreResult<bool>;
    /// `owner`'s sessions, newest first, at most `limit`.
    async fn sessions_of(&self, owner: &str, limit: usize) -> StoreResult<Vec<Session>>;
    /// Erases every session of `owner` (with their turns, jobs, audio and
    /// embedded memories), the profile and what was forgotten. The memory
    /// store outside the database (Qdrant) is the caller's to erase.
    async fn erase_owner(&self, owner: &str) -> StoreResult<Erased>;
}

/// The fingerprint a forgotten text is kept as.
#[must_use]
pub fn fingerprint(text: &str) -> String {
    let mut normal = String::with_capacity(text.len());
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if !normal.is_empty() {
            normal.push(' ');
        }
        normal.extend(word.chars().flat_map(char::to_lowercase));
    }
    hex::encode(Sha256::digest(normal.as_bytes()))
}

macro_rules! person_store {
    ($store:ident) => {
        #[async_trait]
        impl PersonStore for $store {
            async fn profile(&self, owner: &str) -> StoreResult<Vec<ProfileLine>> {
                let rows: Vec<(String, String, String, i64, i64, Option<String>)> = sqlx::query_as(
                    "SELECT id, field, text, created_at, updated_at, source_job FROM profile_lines \
                     WHERE owner = $1 ORDER BY created_at, id",
                )
                .bind(owner)
                .fetch_all(self.pool())
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(id, field, text, created_at, updated_at, source_job)| ProfileLine {
                        id,
                        field,
                        text,
                        source_job,
                        created_at,
                        updated_at,
                    })
                    .collect())
            }

            async fn add_profile_line(
                &self,
                owner: &str,
                field: &str,
                text: &str,
                source_job: Option<&str>,
            ) -> StoreResult<String> {
                let id = ulid::Ulid::generate().to_string();
                let now = now_ms();
                sqlx::query(
                    "INSERT INTO profile_lines (id, owner, field, text, created_at, updated_at, source_job) \
                     VALUES ($1, $2, $3, $4, $5, $5, $6)",
                )
                .bind(&id)
                .bind(owner)
                .bind(field)
                .bind(text)
                .bind(now)
                .bind(source_job)
                .execute(self.pool())
                .await?;
                Ok(id)
            }

            async fn update_profile_line(&self, owner: &str, id: &str, text: &str) -> StoreResult<bool> {
                let done = sqlx::query(
                    "UPDATE profile_lines SET text = $3, updated_at = $4 WHERE owner = $1 AND id = $2",
                )
                .bind(owner)
                .bind(id)
                .bind(text)
                .bind(now_ms())
                .execute(self.pool())
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn delete_profile_line(&self, owner: &str, id: &str) -> StoreResult<bool> {
                let done = sqlx::query("DELETE FROM profile_lines WHERE owner = $1 AND id = $2")
                    .bind(owner)
                    .bind(id)
                    .execute(self.pool())
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn forget(&self, owner: &str, text: &str, source_job: Option<&str>) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO forgotten (owner, fingerprint, source_job, forgotten_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (owner, fingerprint) DO NOTHING",
                )
                .bind(owner)
                .bind(fingerprint(text))
                .bind(source_job)
                .bind(now_ms())
                .execute(self.pool())
                .await?;
                Ok(())
            }

            async fn is_forgotten(&self, owner: &str, text: &str, job: Option<&str>) -> StoreResult<bool> {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM forgotten WHERE owner = $1 \
                     AND (fingerprint = $2 OR (source_job IS NOT NULL AND source_job = $3))",
                )
                .bind(owner)
                .bind(fingerprint(text))
                .bind(job)
                .fetch_one(self.pool())
                .await?;
                Ok(n > 0)
            }

            async fn sessions_of(&self, owner: &str, limit: usize) -> StoreResult<Vec<Session>> {
                let rows: Vec<super::rows::SessionRow> = sqlx::query_as(
                    "SELECT id, user_id, created_at, last_active_at, summary, summarized_until \
                     FROM sessions WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
                )
                .bind(owner)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(self.pool())
                .await?;
                rows.into_iter().map(Session::try_from).collect()
            }

            async fn erase_owner(&self, owner: &str) -> StoreResult<Erased> {
                let mut tx = self.pool().begin().await?;
                // Children first, explicitly: correct even where foreign keys are off.
                for table in ["turns", "voice_jobs", "audio", "memories"] {
                    let sql = format!(
                        "DELETE FROM {table} WHERE session_id IN (SELECT id FROM sessions WHERE user_id = $1)"
                    );
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(owner)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query("DELETE FROM memories WHERE owner = $1")
                    .bind(owner)
                    .execute(&mut *tx)
                    .await?;
                let sessions = sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                    .bind(owner)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let profile_lines = sqlx::query("DELETE FROM profile_lines WHERE owner = $1")
                    .bind(owner)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                sqlx::query("DELETE FROM forgotten WHERE owner = $1")
                    .bind(owner)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Erased {
                    sessions,
                    profile_lines,
                })
            }
        }
    };
}

person_store!(SqliteStore);
person_store!(PgStore);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_ignores_case_spacing_and_punctuation() {
        assert_eq!(
            fingerprint("The user's name is Anna."),
            fingerprint("  the USER'S name   is anna")
        );
        assert_ne!(
            fingerprint("The user's name is Anna."),
            fingerprint("The user's name is Ann.")
        );
        assert_eq!(fingerprint("x").len(), 64);
    }
}
