//! Multipart form parsing over an already-buffered body, shared by the
//! transcription handler and the request recorder.
//!
//! It reuses axum's `Multipart` (multer) on a request rebuilt from the
//! original parts, so the router's body-limit setting still applies. A part
//! with a file name is a file; any other part is text.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest as _, Multipart, Request};
use axum::http::request::Parts;

/// An uploaded file part.
#[derive(Debug, Clone)]
pub(crate) struct FilePart {
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: Bytes,
}

/// One form part's value.
#[derive(Debug, Clone)]
pub(crate) enum FieldValue {
    Text(String),
    File(FilePart),
}

/// The parts of a form, in order.
#[derive(Debug, Default)]
pub(crate) struct Form {
    pub fields: Vec<(String, FieldValue)>,
}

impl Form {
    /// The last text field called `name`.
    pub(crate) fn text(&self, name: &str) -> Option<&str> {
        self.fields.iter().rev().find_map(|(n, v)| match v {
            FieldValue::Text(t) if n == name => Some(t.as_str()),
            _ => None,
        })
    }

    /// The last file part called `name`.
    pub(crate) fn file(&self, name: &str) -> Option<&FilePart> {
        self.fields.iter().rev().find_map(|(n, v)| match v {
            FieldValue::File(f) if n == name => Some(f),
            _ => None,
        })
    }
}

/// Why a body is not a readable multipart form.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FormError {
    /// The content type is not `multipart/form-data` with a boundary.
    #[error("request Content-Type isn't multipart/form-data")]
    NotMultipart(#[source] axum::extract::multipart::MultipartRejection),
    /// The body does not follow the multipart syntax.
    #[error("malformed multipart body: {0}")]
    Malformed(#[source] axum::extract::multipart::MultipartError),
}

/// Parses `body` as the multipart form described by `parts`' headers.
pub(crate) async fn parse(parts: &Parts, body: Bytes) -> Result<Form, FormError> {
    let request = Request::from_parts(parts.clone(), Body::from(body));
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(FormError::NotMultipart)?;
    let mut form = Form::default();
    while let Some(field) = multipart.next_field().await.map_err(FormError::Malformed)? {
        let name = field.name().unwrap_or_default().to_owned();
        let filename = field.file_name().map(str::to_owned);
        let content_type = field.content_type().map(str::to_owned);
        let data = field.bytes().await.map_err(FormError::Malformed)?;
        let value = if filename.is_some() {
            FieldValue::File(FilePart {
                filename,
                content_type,
                data,
            })
        } else {
            FieldValue::Text(String::from_utf8_lossy(&data).into_owned())
        };
        form.fields.push((name, value));
    }
    Ok(form)
}
