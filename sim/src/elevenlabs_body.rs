//! The ElevenLabs text-to-speech request body and error shapes.
//!
//! Errors come in ElevenLabs' two shapes: `{"detail": {"status", "message"}}`
//! for its own checks and FastAPI's validation list
//! `{"detail": [{"loc", "msg", "type"}]}` for 422s. The body is a JSON
//! object with a non-blank `text`, an optional string `model_id`,
//! `voice_settings` within 0–1, and the request-stitching fields
//! (`previous_text`, `next_text`, `previous_request_ids`,
//! `next_request_ids`) checked as ElevenLabs documents them.

use axum::Json;
use axum::body::Bytes;
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// How many earlier or later request ids one request may name.
pub(crate) const MAX_REQUEST_IDS: usize = 3;

/// An ElevenLabs error answer: a status, a JSON body and maybe `retry-after`.
#[derive(Debug)]
pub(crate) struct ElevenError {
    pub status: StatusCode,
    pub body: Value,
    pub retry_after: Option<String>,
}

impl IntoResponse for ElevenError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(value) = self
            .retry_after
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            response.headers_mut().insert(RETRY_AFTER, value);
        }
        response
    }
}

/// An ElevenLabs `{"detail": {"status", "message"}}` error.
pub(crate) fn detail(status: StatusCode, code: &str, message: &str) -> ElevenError {
    ElevenError {
        status,
        body: json!({"detail": {"status": code, "message": message}}),
        retry_after: None,
    }
}

/// A FastAPI validation error (422) at `loc`.
pub(crate) fn unprocessable(loc: &[&str], msg: &str, kind: &str) -> ElevenError {
    unprocessable_at(json!(loc), msg, kind, None)
}

/// A FastAPI validation error (422) at a `loc` that may hold list indices,
/// with its `ctx` when the rule has a limit.
fn unprocessable_at(loc: Value, msg: &str, kind: &str, ctx: Option<Value>) -> ElevenError {
    let mut error = json!({"loc": loc, "msg": msg, "type": kind});
    if let Some(ctx) = ctx {
        error["ctx"] = ctx;
    }
    ElevenError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        body: json!({ "detail": [error] }),
        retry_after: None,
    }
}

/// The JSON object body, or FastAPI's 422.
pub(crate) fn json_body(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Map<String, Value>, ElevenError> {
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("json"));
    if !is_json {
        return Err(unprocessable(
            &["body"],
            "value is not a valid dict",
            "type_error.dict",
        ));
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(unprocessable(
            &["body"],
            "value is not a valid dict",
            "type_error.dict",
        )),
        Err(e) => Err(unprocessable(
            &["body"],
            &format!("Expecting value: {e}"),
            "value_error.jsondecode",
        )),
    }
}

/// Checks `text`, `model_id`, `voice_settings` and the context fields;
/// returns the text.
pub(crate) fn validate(body: &Map<String, Value>) -> Result<&str, ElevenError> {
    let text = match body.get("text") {
        None | Some(Value::Null) => {
            return Err(unprocessable(
                &["body", "text"],
                "field required",
                "value_error.missing",
            ));
        }
        Some(Value::String(t)) if t.trim().is_empty() => {
            return Err(unprocessable(
                &["body", "text"],
                "ensure this value has at least 1 characters",
                "value_error.any_str.min_length",
            ));
        }
        Some(Value::String(t)) => t.as_str(),
        Some(_) => {
            return Err(unprocessable(
                &["body", "text"],
                "str type expected",
                "type_error.str",
            ));
        }
    };
    if let Some(model) = body.get("model_id").filter(|v| !v.is_null())
        && !model.is_string()
    {
        return Err(unprocessable(
            &["body", "model_id"],
            "str type expected",
            "type_error.str",
        ));
    }
    match body.get("voice_settings") {
        None | Some(Value::Null) => {}
        Some(Value::Object(settings)) => {
            for name in ["stability", "similarity_boost", "style"] {
                let Some(value) = settings.get(name).filter(|v| !v.is_null()) else {
                    continue;
                };
                let loc = ["body", "voice_settings", name];
                let Some(number) = value.as_f64() else {
                    return Err(unprocessable(
                        &loc,
                        "value is not a valid float",
                        "type_error.float",
                    ));
                };
                if number < 0.0 {
                    return Err(unprocessable(
                        &loc,
                        "ensure this value is greater than or equal to 0",
                        "value_error.number.not_ge",
                    ));
                }
                if number > 1.0 {
                    return Err(unprocessable(
                        &loc,
                        "ensure this value is less than or equal to 1",
                        "value_error.number.not_le",
                    ));
                }
            }
        }
        Some(_) => {
            return Err(unprocessable(
                &["body", "voice_settings"],
                "value is not a valid dict",
                "type_error.dict",
            ));
        }
    }
    check_context(body)?;
    Ok(text)
}

/// The request-stitching fields: `previous_text` and `next_text` are
/// strings, `previous_request_ids` and `next_request_ids` lists of at most
/// [`MAX_REQUEST_IDS`] strings (ElevenLabs: "A maximum of 3 request_ids can
/// be send").
fn check_context(body: &Map<String, Value>) -> Result<(), ElevenError> {
    for name in ["previous_text", "next_text"] {
        if let Some(value) = body.get(name).filter(|v| !v.is_null())
            && !value.is_string()
        {
            return Err(unprocessable(
                &["body", name],
                "str type expected",
                "type_error.str",
            ));
        }
    }
    for name in ["previous_request_ids", "next_request_ids"] {
        let ids = match body.get(name) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(ids)) => ids,
            Some(_) => {
                return Err(unprocessable(
                    &["body", name],
                    "value is not a valid list",
                    "type_error.list",
                ));
            }
        };
        if let Some(i) = ids.iter().position(|id| !id.is_string()) {
            return Err(unprocessable_at(
                json!(["body", name, i]),
                "str type expected",
                "type_error.str",
                None,
            ));
        }
        if ids.len() > MAX_REQUEST_IDS {
            return Err(unprocessable_at(
                json!(["body", name]),
                &format!("ensure this value has at most {MAX_REQUEST_IDS} items"),
                "value_error.list.max_items",
                Some(json!({ "limit_value": MAX_REQUEST_IDS })),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: Value) -> Result<(), Value> {
        let Value::Object(map) = body else {
            return Err(Value::Null);
        };
        validate(&map).map(|_| ()).map_err(|e| e.body)
    }

    #[test]
    fn stitching_fields_are_checked() {
        let ok = json!({
            "text": "Hello.",
            "previous_text": "Before.",
            "next_text": null,
            "previous_request_ids": ["a", "b", "c"],
            "next_request_ids": [],
        });
        assert_eq!(check(ok), Ok(()));
        for (body, loc, kind) in [
            (
                json!({"text": "x", "previous_text": 5}),
                json!(["body", "previous_text"]),
                "type_error.str",
            ),
            (
                json!({"text": "x", "next_text": ["a"]}),
                json!(["body", "next_text"]),
                "type_error.str",
            ),
            (
                json!({"text": "x", "next_request_ids": "a"}),
                json!(["body", "next_request_ids"]),
                "type_error.list",
            ),
            (
                json!({"text": "x", "previous_request_ids": ["a", 2]}),
                json!(["body", "previous_request_ids", 1]),
                "type_error.str",
            ),
            (
                json!({"text": "x", "previous_request_ids": ["a", "b", "c", "d"]}),
                json!(["body", "previous_request_ids"]),
                "value_error.list.max_items",
            ),
        ] {
            let error = check(body.clone()).expect_err("invalid");
            assert_eq!(error["detail"][0]["loc"], loc, "{body}");
            assert_eq!(error["detail"][0]["type"], kind, "{body}");
        }
    }
}
