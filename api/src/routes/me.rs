//! `GET /api/me/memories`, `DELETE /api/me/memories/{id}`, `DELETE /api/me`:
//! what Rose keeps of a person, shown to that person and erasable by them.
//!
//! The person proves who they are with their key (`X-Person-Key`) or their
//! integrator's token (`Authorization: Bearer <user_token>`); nothing else
//! opens these routes, and an id that is not theirs is "not found" (never
//! "forbidden": whether someone else's memory exists is not told).
//!
//! Ids are `p_<id>` for profile lines and `m_<id>` for memories. A forgotten
//! line is recorded as a fingerprint (see [`rose_shared::store::person`]), so
//! extraction never learns it again from the turns it came from.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use rose_shared::Rose;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, ErrorBody};

/// The header a person's key travels in.
pub const PERSON_KEY_HEADER: &str = "x-person-key";
/// Items per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 50;
/// Most items per page.
pub const MAX_LIMIT: usize = 200;

/// Routes for the person's own data.
pub fn router() -> OpenApiRouter<Rose> {
    OpenApiRouter::new()
        .routes(routes!(memories))
        .routes(routes!(forget_one))
        .routes(routes!(erase))
}

/// The owner the request's credentials name.
///
/// # Errors
/// [`ApiError::IdentityRequired`] without credentials; the identity errors
/// for a malformed key or a bad token.
pub fn person(rose: &Rose, headers: &HeaderMap) -> ApiResult<String> {
    if let Some(key) = headers.get(PERSON_KEY_HEADER) {
        let key = key.to_str().map_err(|_| ApiError::InvalidPersonKey)?;
        return Ok(rose.identity.person_owner(key)?);
    }
    if let Some(token) = crate::routes::admin::bearer(headers) {
        let token = std::str::from_utf8(token)
            .map_err(|_| ApiError::InvalidUserToken("the token is not text".to_owned()))?;
        let now = rose_shared::domain::now_ms() / 1000;
        return Ok(rose.identity.token_user(token, now)?);
    }
    Err(ApiError::IdentityRequired)
}

/// The published shape of a person key.
const KEY_PATTERN: &str = r"^[A-Za-z0-9_-]{43}=?$";

/// Says in `doc` what a person key looks like wherever the header is taken
/// (a plain string: the header is absent or a key, never `null`).
pub fn document(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::Type;
    use utoipa::openapi::schema::ObjectBuilder;
    for item in doc.paths.paths.values_mut() {
        for operation in [&mut item.get, &mut item.post, &mut item.delete]
            .into_iter()
            .flatten()
        {
            for parameter in operation.parameters.iter_mut().flatten() {
                if let utoipa::openapi::RefOr::T(parameter) = parameter
                    && parameter.name.eq_ignore_ascii_case(PERSON_KEY_HEADER)
                {
                    parameter.schema = Some(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .pattern(Some(KEY_PATTERN))
                            .into(),
                    );
                }
            }
        }
    }
}

/// One thing Rose keeps of the person.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Kept {
    /// `p_…` (a profile line) or `m_…` (a memory).
    pub id: String,
    /// `profile`: always in Rose's mind; `memory`: recalled when it bears
    /// on what is said.
    pub kind: &'static str,
    /// For a profile line: `name`, `grieving`, `date`, `helps`, `avoid` or `about`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub text: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// A page of what Rose keeps, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeptPage {
    pub items: Vec<Kept>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

fn parse_limit(query: &HashMap<String, String>) -> ApiResult<usize> {
    let Some(raw) = query.get("limit") else {
        return Ok(DEFAULT_LIMIT);
    };
    match raw.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::InvalidQuery(format!(
            "`limit` must be a whole number from 1 to {MAX_LIMIT}"
        ))),
    }
}

/// A cursor is the last item's `created_at` and id: the page after it holds
/// what sorts after it (newest first, ids descending within a millisecond).
fn parse_cursor(raw: &str) -> ApiResult<(i64, String)> {
    raw.split_once('.')
        .filter(|(at, _)| (1..=18).contains(&at.len()) && at.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|(at, id)| Some((at.parse().ok()?, id.to_owned())))
        .filter(|(_, id): &(i64, String)| {
            (id.starts_with("p_") || id.starts_with("m_"))
                && id.len() > 2
                && id[2..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .ok_or_else(|| ApiError::InvalidQuery("`cursor` is not one this api gave".to_owned()))
}

/// What Rose keeps of the person: their profile lines and memories together,
/// newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/api/me/memories",
    tag = "me",
    params(
        ("X-Person-Key" = Option<String>, Header, description = "The person's key (or send `Authorization: Bearer <user_token>`)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 200, description = "Items per page (default 50)"),
        ("cursor" = Option<String>, Query, pattern = r"^[0-9]{1,18}\.[pm]_[0-9A-Za-z-]+$", description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page, newest first", body = KeptPage),
        (status = 400, description = "`invalid_person_key`, `invalid_query`", body = ErrorBody),
        (status = 401, description = "`identity_required`, `invalid_user_token`", body = ErrorBody),
        (status = 503, description = "`database_unavailable`, `memory_unavailable`", body = ErrorBody),
    )
)]
async fn memories(
    State(rose): State<Rose>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<KeptPage>> {
    let owner = person(&rose, &headers)?;
    let limit = parse_limit(&query)?;
    let after = query.get("cursor").map(|c| parse_cursor(c)).transpose()?;
    let mut items: Vec<Kept> = rose
        .store
        .profile(&owner)
        .await?
        .into_iter()
        .map(|line| Kept {
            id: format!("p_{}", line.id),
            kind: "profile",
            field: Some(line.field),
            text: line.text,
            created_at: line.created_at,
        })
        .collect();
    items.extend(
        rose.memory
            .store
            .list(&owner)
            .await?
            .into_iter()
            .map(|m| Kept {
                id: format!("m_{}", m.id),
                kind: "memory",
                field: None,
                text: m.text,
                created_at: m.created_at,
            }),
    );
    items.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    if let Some((at, id)) = after {
        items.retain(|k| (k.created_at, k.id.as_str()) < (at, id.as_str()));
    }
    let next_cursor = (items.len() > limit)
        .then(|| items.get(limit - 1))
        .flatten()
        .map(|last| format!("{}.{}", last.created_at, last.id));
    items.truncate(limit);
    Ok(Json(KeptPage { items, next_cursor }))
}

/// Forgets one profile line or memory. It is not learnt again from the
/// turns it came from.
#[utoipa::path(
    delete,
    path = "/api/me/memories/{id}",
    tag = "me",
    params(
        ("id" = String, Path, description = "An `id` from `GET /api/me/memories`"),
        ("X-Person-Key" = Option<String>, Header, description = "The person's key (or send `Authorization: Bearer <user_token>`)"),
    ),
    responses(
        (status = 204, description = "Forgotten"),
        (status = 400, description = "`invalid_person_key`", body = ErrorBody),
        (status = 401, description = "`identity_required`, `invalid_user_token`", body = ErrorBody),
        (status = 404, description = "`memory_not_found`: not this person's", body = ErrorBody),
        (status = 503, description = "`database_unavailable`, `memory_unavailable`", body = ErrorBody),
    )
)]
async fn forget_one(
    State(rose): State<Rose>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let owner = person(&rose, &headers)?;
    if let Some(line_id) = id.strip_prefix("p_") {
        let line = rose
            .store
            .profile(&owner)
            .await?
            .into_iter()
            .find(|l| l.id == line_id)
            .ok_or(ApiError::MemoryNotFound)?;
        // Recorded before the line goes, so an extraction running now
        // cannot put it back in between.
        rose.store
            .forget(&owner, &line.text, line.source_job.as_deref())
            .await?;
        if !rose.store.delete_profile_line(&owner, line_id).await? {
            return Err(ApiError::MemoryNotFound);
        }
    } else if let Some(memory_id) = id.strip_prefix("m_") {
        let gone = rose
            .memory
            .store
            .delete_one(&owner, memory_id)
            .await?
            .ok_or(ApiError::MemoryNotFound)?;
        rose.store
            .forget(&owner, &gone.text, gone.source_job.as_deref())
            .await?;
    } else {
        return Err(ApiError::MemoryNotFound);
    }
    tracing::info!(event = "memory_forgotten", "a person forgot one memory");
    Ok(StatusCode::NO_CONTENT)
}

/// Erases the person: every session with its turns, jobs and audio, every
/// memory in whichever store holds them, the profile. Memories go first:
/// when the memory store cannot be reached the answer is 503 and the client
/// simply tries again.
#[utoipa::path(
    delete,
    path = "/api/me",
    tag = "me",
    params(
        ("X-Person-Key" = Option<String>, Header, description = "The person's key (or send `Authorization: Bearer <user_token>`)"),
    ),
    responses(
        (status = 204, description = "Erased (also when nothing was kept)"),
        (status = 400, description = "`invalid_person_key`", body = ErrorBody),
        (status = 401, description = "`identity_required`, `invalid_user_token`", body = ErrorBody),
        (status = 503, description = "`database_unavailable`, `memory_unavailable`", body = ErrorBody),
    )
)]
async fn erase(State(rose): State<Rose>, headers: HeaderMap) -> ApiResult<StatusCode> {
    let owner = person(&rose, &headers)?;
    let memories = rose.memory.store.delete_owner(&owner).await?;
    let erased = rose.store.erase_owner(&owner).await?;
    tracing::info!(
        event = "person_erased",
        sessions = erased.sessions,
        profile_lines = erased.profile_lines,
        memories,
        "person erased"
    );
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_cursors_are_checked() {
        let q = |k: &str, v: &str| HashMap::from([(k.to_owned(), v.to_owned())]);
        assert_eq!(parse_limit(&HashMap::new()).ok(), Some(DEFAULT_LIMIT));
        assert_eq!(parse_limit(&q("limit", "200")).ok(), Some(200));
        for bad in ["0", "201", "-1", "x", ""] {
            assert!(parse_limit(&q("limit", bad)).is_err(), "{bad}");
        }
        assert_eq!(
            parse_cursor("1733140000000.m_01J").ok(),
            Some((1_733_140_000_000, "m_01J".to_owned()))
        );
        for bad in [
            "", "x.m_1", "17.", "17", "0.5", "-1.m_1", "1.m_", "1.q_1", "1.m_a b",
        ] {
            assert!(parse_cursor(bad).is_err(), "{bad}");
        }
    }
}
