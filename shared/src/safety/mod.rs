//! Safety: a person who speaks of ending their life or harming themselves
//! meets a human resource, every time — not only when the model remembers
//! to mention one.
//!
//! [`crisis_rule`] marks such a turn from its transcript (a documented
//! pattern set, see [`classify`]); the worker then asks the reply model for
//! warmth and presence, appends the configured [`CrisisResource`] to the
//! reply itself ([`with_resource`]), and keeps the mark on the job row, so
//! the job JSON says `"safety": "crisis"` and carries `result.resource`. The
//! resource is `ROSE_CRISIS_RESOURCES` (see [`CrisisResource::parse`]), by
//! default [`CrisisResource::international`]: a warm line pointing to Find A
//! Helpline, which lists free, confidential lines by country.

pub mod classify;
#[cfg(test)]
mod tests;

pub use classify::{crisis_rule, is_crisis};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The longest resource text Rose accepts (it is appended to a spoken reply).
pub const MAX_RESOURCE_TEXT: usize = 600;

/// A human resource for a person in crisis: what to say, and where to go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CrisisResource {
    /// Warm words that name the resource; spoken as part of the reply.
    #[schema(example = "You don't have to carry this alone. …")]
    pub text: String,
    /// Where to find it: an `https://`/`http://` page, or a `tel:` number.
    #[schema(example = "https://findahelpline.com")]
    pub url: String,
}

impl Default for CrisisResource {
    fn default() -> Self {
        Self::international()
    }
}

impl CrisisResource {
    /// The default: international, pointing to finding a local line (Find A
    /// Helpline lists free, confidential helplines for each country), and to
    /// the local emergency number for immediate danger.
    #[must_use]
    pub fn international() -> Self {
        Self {
            text: "You don't have to carry this alone. If you are thinking of ending your life \
                   or hurting yourself, please reach out now to a crisis line, or to your local \
                   emergency number if you are in danger. You can find a free, confidential \
                   line in your country at findahelpline.com."
                .to_owned(),
            url: "https://findahelpline.com".to_owned(),
        }
    }

    /// Parses `ROSE_CRISIS_RESOURCES`: JSON `{"text": "…", "url": "…"}`, or
    /// `text|url` (split at the last `|`). The text is 1 to
    /// [`MAX_RESOURCE_TEXT`] characters without control characters; the URL
    /// is an absolute `https://` or `http://` URL with a host, or a `tel:`
    /// number (digits, spaces, `+`, `-`, `(`, `)`).
    ///
    /// # Errors
    /// What is wrong, in words for the operator.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let resource = if raw.starts_with('{') {
            serde_json::from_str::<Self>(raw)
                .map_err(|e| format!("expected JSON {{\"text\": \"…\", \"url\": \"…\"}} ({e})"))?
        } else {
            let (text, url) = raw
                .rsplit_once('|')
                .ok_or("expected JSON {\"text\", \"url\"} or text|url")?;
            Self {
                text: text.to_owned(),
                url: url.to_owned(),
            }
        };
        let resource = Self {
            text: resource.text.trim().to_owned(),
            url: resource.url.trim().to_owned(),
        };
        let chars = resource.text.chars().count();
        if chars == 0 || chars > MAX_RESOURCE_TEXT {
            return Err(format!(
                "the text must be 1 to {MAX_RESOURCE_TEXT} characters, got {chars}"
            ));
        }
        if resource.text.chars().any(char::is_control) {
            return Err("the text must not hold control characters".to_owned());
        }
        if !valid_url(&resource.url) {
            return Err(format!(
                "expected an https://, http:// or tel: URL, got {:?}",
                resource.url
            ));
        }
        Ok(resource)
    }

    /// The line appended to a marked reply: the text, then the URL.
    #[must_use]
    pub fn line(&self) -> String {
        format!("{} {}", self.text, self.url)
    }
}

fn valid_url(url: &str) -> bool {
    if let Some(number) = url.strip_prefix("tel:") {
        return number.chars().any(|c| c.is_ascii_digit())
            && number
                .chars()
                .all(|c| c.is_ascii_digit() || " +-()".contains(c));
    }
    url::Url::parse(url).is_ok_and(|u| {
        matches!(u.scheme(), "https" | "http") && u.host_str().is_some_and(|h| !h.is_empty())
    }) && !url.chars().any(char::is_whitespace)
}

/// A turn's safety mark, kept on the job row (`voice_jobs.safety`, with the
/// resource its reply carries in `safety_resource`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Safety {
    /// The person spoke of ending their life or harming themselves.
    Crisis(CrisisResource),
}

impl Safety {
    /// The name in the job JSON and the row: `crisis`.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Crisis(_) => "crisis",
        }
    }

    /// The resource a marked turn's reply carries.
    #[must_use]
    pub fn resource(&self) -> &CrisisResource {
        match self {
            Self::Crisis(resource) => resource,
        }
    }
}

/// `reply` ending with the resource's line, after a blank line: appended
/// once (a reply that already ends with it is returned as it is).
#[must_use]
pub fn with_resource(reply: &str, resource: &CrisisResource) -> String {
    let line = resource.line();
    let reply = reply.trim_end();
    if reply.ends_with(&line) {
        return reply.to_owned();
    }
    if reply.is_empty() {
        return line;
    }
    format!("{reply}\n\n{line}")
}

/// What is spoken of a marked reply: all of it but the trailing URL (a web
/// address read aloud helps no one; its text says where to look, and the
/// URL is on the screen).
#[must_use]
pub fn spoken<'a>(reply: &'a str, resource: &CrisisResource) -> &'a str {
    reply
        .trim_end()
        .strip_suffix(resource.url.as_str())
        .map_or(reply, str::trim_end)
}
