//! `POST /api/session/start`, `DELETE /api/session/{id}`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rose_shared::Rose;
use rose_shared::domain::{SessionId, SummaryTask};
use rose_shared::identity;
use rose_shared::queue::SUMMARY_QUEUE;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, ErrorBody};

/// Session routes.
pub fn router() -> OpenApiRouter<Rose> {
    OpenApiRouter::new()
        .routes(routes!(start))
        .routes(routes!(erase))
}

/// Who the session belongs to: at most one of the three; with none, the
/// session is anonymous and its memories stay with it.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct StartBody {
    /// 32 random bytes in base64url (43 characters, no padding) that the
    /// client made and keeps: the person's key. Rose keeps only a keyed
    /// hash of it.
    #[schema(min_length = 43, max_length = 44, pattern = r"^[A-Za-z0-9_-]{43}=?$")]
    person_key: Option<String>,
    /// A JWT (HS256, `sub` = the integrator's user id, `exp`) signed with
    /// `ROSE_USER_TOKEN_SECRET`.
    user_token: Option<String>,
    /// Only with `Authorization: Bearer $ROSE_API_KEY` (server to server):
    /// 1-200 characters once trimmed, not only whitespace.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    user_id: Option<String>,
}

/// The fields that name a person; a body holds at most one.
const IDENTITY_FIELDS: [&str; 3] = ["person_key", "user_token", "user_id"];

/// A new session.
#[derive(Debug, Serialize, ToSchema)]
struct Started {
    session_id: String,
    /// This person has spoken with Rose before (an earlier session, or
    /// something she keeps of them).
    returning: bool,
}

/// The owner `body` names (at most one field, checked by the caller),
/// checked; `None` for an anonymous session.
fn owner(rose: &Rose, headers: &HeaderMap, body: StartBody) -> ApiResult<Option<String>> {
    if let Some(key) = body.person_key {
        return Ok(Some(rose.identity.person_owner(&key)?));
    }
    if let Some(token) = body.user_token {
        let now = rose_shared::domain::now_ms() / 1000;
        return Ok(Some(rose.identity.token_user(&token, now)?));
    }
    if let Some(user) = body.user_id {
        let vouched = crate::routes::admin::bearer(headers)
            .is_some_and(|given| rose.identity.is_api_key(given));
        if !vouched {
            return Err(ApiError::UserIdRequiresToken);
        }
        return Ok(Some(identity::user_id(&user)?));
    }
    Ok(None)
}

/// Starts a session. The body is optional: empty, or a JSON object naming
/// the person with one of `person_key`, `user_token`, or `user_id` (the
/// last only with the server's `ROSE_API_KEY`).
///
/// For a returning person, the summary of their previous conversation is
/// made now (in the background) if it was not yet, so that Rose can pick up
/// the thread in this one.
#[utoipa::path(
    post,
    path = "/api/session/start",
    tag = "sessions",
    request_body(content = StartBody, content_type = "application/json", description = "Optional: no body, or a JSON object"),
    responses(
        (status = 201, description = "Session started", body = Started),
        (status = 400, description = "`invalid_json`, `invalid_user_id`, `invalid_person_key`, `ambiguous_identity`", body = ErrorBody),
        (status = 401, description = "`user_id_requires_token`, `invalid_user_token`", body = ErrorBody),
        (status = 503, description = "`database_unavailable` (with `Retry-After`), `person_keys_unavailable`", body = ErrorBody),
        (status = 507, description = "`storage_full`: the disk under the database is full; nothing was stored", body = ErrorBody),
    )
)]
async fn start(State(rose): State<Rose>, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
    // No body at all names no one; anything else must be the JSON object.
    let body: StartBody = if body.is_empty() {
        StartBody::default()
    } else {
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
        // Naming two ways is ambiguous even when one of them is `null`.
        if let Some(fields) = value.as_object()
            && IDENTITY_FIELDS
                .iter()
                .filter(|f| fields.contains_key(**f))
                .count()
                > 1
        {
            return Err(ApiError::AmbiguousIdentity);
        }
        serde_json::from_value(value).map_err(|e| ApiError::InvalidJson(e.to_string()))?
    };
    let owner = owner(&rose, &headers, body)?;
    let returning = match &owner {
        Some(owner) => {
            close_previous(&rose, owner).await? || !rose.store.profile(owner).await?.is_empty()
        }
        None => false,
    };
    let session = rose.store.create_session(owner.as_deref()).await?;
    let started = Started {
        session_id: session.id.to_string(),
        returning,
    };
    Ok((StatusCode::CREATED, Json(started)).into_response())
}

/// Sessions looked at for the person's last conversation (a person who
/// opened the page without speaking leaves empty sessions in between).
const RECENT_SESSIONS: usize = 5;

/// Finds `owner`'s last conversation among their recent sessions (the
/// newest one with a turn) and queues its closing summary when turns are
/// missing from its summary; true when there was one. Losing the summary
/// costs only continuity: a queue failure is logged.
async fn close_previous(rose: &Rose, owner: &str) -> ApiResult<bool> {
    for previous in rose.store.sessions_of(owner, RECENT_SESSIONS).await? {
        let unsummarized = rose
            .store
            .count_turns_since(previous.id, previous.summarized_until)
            .await?;
        if unsummarized == 0 {
            if previous.summary.is_some() {
                return Ok(true);
            }
            continue;
        }
        let task = SummaryTask {
            session_id: previous.id,
            attempt: 0,
            close: true,
        };
        let id = format!("{}:close:{}", previous.id, previous.summarized_until);
        if let Err(e) = rose.queue.push(SUMMARY_QUEUE, &id, &task).await {
            tracing::warn!(session_id = %previous.id, error = %e, "could not queue the closing summary");
        }
        return Ok(true);
    }
    Ok(false)
}

/// Marks the start body optional in `doc`. `request_body` can only say
/// "optional" by making the schema nullable, which would promise that a
/// `null` body is taken; it is refused (400 `invalid_json`): the body is
/// absent (or blank), or a JSON object.
pub fn document(doc: &mut utoipa::openapi::OpenApi) {
    if let Some(RefOr::T(body)) = doc
        .paths
        .paths
        .get_mut("/api/session/start")
        .and_then(|item| item.post.as_mut())
        .and_then(|operation| operation.request_body.as_mut())
    {
        body.required = Some(utoipa::openapi::Required::False);
    }
    one_identity(doc);
}

/// Says in `doc` that the start body names the person at most one way:
/// `StartBody` becomes a `oneOf` of the empty object and one object per
/// identity field, as the handler enforces (400 `ambiguous_identity`).
fn one_identity(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Schema};
    let Some(schemas) = doc.components.as_mut().map(|c| &mut c.schemas) else {
        return;
    };
    let Some(RefOr::T(Schema::Object(body))) = schemas.get("StartBody").cloned() else {
        return;
    };
    let closed = || Some(AdditionalProperties::<Schema>::FreeForm(false));
    let mut one_of = OneOfBuilder::new()
        .description(body.description.clone())
        .item(ObjectBuilder::new().additional_properties(closed()));
    for field in IDENTITY_FIELDS {
        if let Some(property) = body.properties.get(field) {
            one_of = one_of.item(
                ObjectBuilder::new()
                    .property(field, property.clone())
                    .required(field)
                    .additional_properties(closed()),
            );
        }
    }
    schemas.insert(
        "StartBody".to_owned(),
        RefOr::T(Schema::OneOf(one_of.build())),
    );
}

/// Erases the session and everything it owned. Its memories go first: when
/// the memory store cannot be reached the answer is 503 and nothing else is
/// touched, so the client can simply try again.
#[utoipa::path(
    delete,
    path = "/api/session/{id}",
    tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 204, description = "Erased with its turns, jobs, audio and memories"),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
        (status = 503, description = "`database_unavailable`, `memory_unavailable`", body = ErrorBody),
    )
)]
async fn erase(State(rose): State<Rose>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let id: SessionId = id.parse().map_err(|_| ApiError::SessionNotFound)?;
    if rose.store.get_session(id).await?.is_none() {
        return Err(ApiError::SessionNotFound);
    }
    let memories = rose.memory.store.delete_session(id).await?;
    tracing::info!(session_id = %id, memories, "session erased");
    if rose.store.delete_session(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::SessionNotFound)
    }
}
