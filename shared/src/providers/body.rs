//! Reading a provider's answer without trusting its size: a body is read
//! up to a limit and refused past it (a 50 MB "answer" is a fault, not a
//! reply), and an error body is read only far enough to say what it says.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::ProviderError;

/// The largest JSON answer (a transcript, a reply, an extraction) read.
pub const MAX_JSON_ANSWER: usize = 2 * 1024 * 1024;
/// The largest audio answer read (a reply is well under 2 MB of MP3).
pub const MAX_AUDIO_ANSWER: usize = 25 * 1024 * 1024;
/// How much of an error answer is read.
pub const MAX_ERROR_BODY: usize = 64 * 1024;

/// The whole body of `response`, refused past `limit` bytes.
///
/// # Errors
/// A transport failure, or a body over the limit ([`ProviderError::bad_answer`]).
pub async fn read_body(
    provider: &'static str,
    response: reqwest::Response,
    limit: usize,
) -> Result<Bytes, ProviderError> {
    if let Some(length) = response.content_length()
        && length > limit as u64
    {
        return Err(too_large(provider, limit));
    }
    let mut out = BytesMut::new();
    let mut parts = response.bytes_stream();
    while let Some(part) = parts.next().await {
        let part = part.map_err(|e| ProviderError::from_reqwest(provider, &e))?;
        if out.len() + part.len() > limit {
            return Err(too_large(provider, limit));
        }
        out.extend_from_slice(&part);
    }
    Ok(out.freeze())
}

/// The start of an error answer, as text (what follows [`MAX_ERROR_BODY`]
/// is not read).
pub async fn read_error_body(response: reqwest::Response) -> String {
    let mut out = Vec::new();
    let mut parts = response.bytes_stream();
    while let Some(Ok(part)) = parts.next().await {
        let room = MAX_ERROR_BODY.saturating_sub(out.len());
        out.extend_from_slice(&part[..part.len().min(room)]);
        if out.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JSON answer parsed, or [`ProviderError::bad_answer`].
///
/// # Errors
/// As [`read_body`], or a body that is not the expected JSON.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    provider: &'static str,
    response: reqwest::Response,
) -> Result<T, ProviderError> {
    let body = read_body(provider, response, MAX_JSON_ANSWER).await?;
    serde_json::from_slice(&body).map_err(|e| {
        ProviderError::bad_answer(
            provider,
            format!("the answer is not the expected JSON: {e}"),
        )
    })
}

/// An audio answer, checked to be audio.
///
/// # Errors
/// As [`read_body`], or a body that is no known audio container.
pub async fn read_audio(
    provider: &'static str,
    response: reqwest::Response,
) -> Result<Bytes, ProviderError> {
    let body = read_body(provider, response, MAX_AUDIO_ANSWER).await?;
    check_audio(provider, &body)?;
    Ok(body)
}

/// Refuses speech that is empty or no known audio container.
///
/// # Errors
/// [`ProviderError::bad_answer`] saying which.
pub fn check_audio(provider: &'static str, bytes: &[u8]) -> Result<(), ProviderError> {
    if bytes.is_empty() {
        return Err(ProviderError::bad_answer(provider, "empty audio"));
    }
    if crate::audio::sniff(bytes).is_none() {
        return Err(ProviderError::bad_answer(
            provider,
            "the answer is not audio Rose knows",
        ));
    }
    Ok(())
}

fn too_large(provider: &'static str, limit: usize) -> ProviderError {
    ProviderError::bad_answer(
        provider,
        format!("the answer is larger than the {limit} bytes Rose reads"),
    )
}
