//! Who a person is, without accounts, in a way no one else can borrow.
//!
//! Three ways to name the owner of a session (and so of its memories and
//! profile):
//! - a **person key**: 32 random bytes the client made (base64url). Rose
//!   never stores it; the owner is `pk_` + hex of HMAC-SHA256 of the key
//!   under the server secret `ROSE_PERSON_KEY_SECRET`, so a database or a
//!   backup that leaks holds nothing that opens a person's data, and a key
//!   guessed from an owner string is impossible.
//! - a **user token**: a JWT signed with HS256 under
//!   `ROSE_USER_TOKEN_SECRET`, whose `sub` is the integrator's user id and
//!   whose `exp` bounds it — how a backend with its own login vouches for its
//!   user. Only HS256 is taken (`alg: none` and every other algorithm are
//!   refused, so no key confusion); `nbf` is honoured when present; 60 s of
//!   clock skew are allowed.
//! - a bare **user id**, only from a server holding `ROSE_API_KEY`
//!   (server-to-server).
//!
//! User ids (from a token or the API key) are owners as given; they may not
//! start with `pk_` or `session:`, which name key holders and anonymous
//! sessions.

use std::io;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::Config;

type HmacSha256 = Hmac<Sha256>;

/// base64url without padding that ignores the 2 unused bits of a 43rd
/// character: every 43-character string of the alphabet is a key, as the
/// published schema says.
const KEY_ENCODING: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
);

/// Bytes in a person key.
pub const PERSON_KEY_BYTES: usize = 32;
/// Prefix of an owner named by a person key.
pub const PERSON_OWNER_PREFIX: &str = "pk_";
/// The file `rose serve` keeps its generated person-key secret in, under
/// `ROSE_DATA_DIR`.
pub const SECRET_FILE: &str = "person_key_secret";
/// Clock skew allowed on a token's `exp` and `nbf`, seconds.
pub const TOKEN_LEEWAY_SECS: i64 = 60;
/// Longest user id, in characters.
pub const MAX_USER_ID_CHARS: usize = 200;

/// Why an identity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("`person_key` must be 32 random bytes in base64url (43 characters, no padding)")]
    InvalidPersonKey,
    #[error("person keys are not configured on this server (ROSE_PERSON_KEY_SECRET)")]
    PersonKeysUnavailable,
    #[error("the user token is not valid: {0}")]
    InvalidUserToken(&'static str),
    #[error(
        "a user id must be 1-200 characters, not only whitespace, and not start with `pk_` or `session:`"
    )]
    InvalidUserId,
}

/// The secrets that name people.
#[derive(Clone, Default)]
pub struct Identity {
    person_secret: Option<SecretString>,
    token_secret: Option<SecretString>,
    api_key: Option<SecretString>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("person_keys", &self.person_secret.is_some())
            .field("user_tokens", &self.token_secret.is_some())
            .field("api_key", &self.api_key.is_some())
            .finish()
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<f64>,
    nbf: Option<f64>,
}

impl Identity {
    /// The secrets `config` holds.
    #[must_use]
    pub fn from_config(config: &Config) -> Self {
        Self {
            person_secret: config.person_key_secret.clone(),
            token_secret: config.user_token_secret.clone(),
            api_key: config.api_key.clone(),
        }
    }

    /// The owner a person key names.
    ///
    /// # Errors
    /// [`IdentityError::InvalidPersonKey`] for anything but 32 bytes of
    /// base64url; [`IdentityError::PersonKeysUnavailable`] without a secret.
    pub fn person_owner(&self, key: &str) -> Result<String, IdentityError> {
        let unpadded = key.strip_suffix('=').unwrap_or(key);
        let bytes = KEY_ENCODING
            .decode(unpadded)
            .map_err(|_| IdentityError::InvalidPersonKey)?;
        if bytes.len() != PERSON_KEY_BYTES {
            return Err(IdentityError::InvalidPersonKey);
        }
        let secret = self
            .person_secret
            .as_ref()
            .ok_or(IdentityError::PersonKeysUnavailable)?;
        Ok(person_owner_with(secret.expose_secret().as_bytes(), &bytes))
    }

    /// The user id a token vouches for, checked at `now_secs` (unix seconds).
    ///
    /// # Errors
    /// [`IdentityError::InvalidUserToken`] saying what is wrong (never what
    /// the right signature would be).
    pub fn token_user(&self, token: &str, now_secs: i64) -> Result<String, IdentityError> {
        let bad = IdentityError::InvalidUserToken;
        let secret = self
            .token_secret
            .as_ref()
            .ok_or(bad("user tokens are not configured on this server"))?;
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not a JWT (header.payload.signature)"));
        };
        let header: Header = decode_part(header).ok_or(bad("the header is not base64url JSON"))?;
        if header.alg != "HS256" {
            return Err(bad("only HS256 is accepted"));
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| bad("the signature is not base64url"))?;
        let mut mac = HmacSha256::new_from_slice(secret.expose_secret().as_bytes())
            .map_err(|_| bad("user tokens are not configured on this server"))?;
        mac.update(&token.as_bytes()[..header_payload_len(token)]);
        mac.verify_slice(&signature)
            .map_err(|_| bad("the signature does not match"))?;
        let claims: Claims =
            decode_part(payload).ok_or(bad("the claims are not base64url JSON"))?;
        let exp = claims.exp.ok_or(bad("`exp` is required"))?;
        let now = now_secs as f64;
        if exp + TOKEN_LEEWAY_SECS as f64 <= now {
            return Err(bad("it has expired"));
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf - TOKEN_LEEWAY_SECS as f64 > now)
        {
            return Err(bad("it is not valid yet (`nbf`)"));
        }
        let sub = claims.sub.ok_or(bad("`sub` is required"))?;
        user_id(&sub).map_err(|_| bad("`sub` is not a valid user id"))
    }

    /// Whether `given` is the server credential `ROSE_API_KEY` (never true
    /// when it is unset).
    #[must_use]
    pub fn is_api_key(&self, given: &[u8]) -> bool {
        self.api_key
            .as_ref()
            .is_some_and(|key| same_secret(given, key.expose_secret().as_bytes()))
    }

    /// Whether person keys can be used here.
    #[must_use]
    pub fn has_person_keys(&self) -> bool {
        self.person_secret.is_some()
    }
}

/// The length of `header.payload` in a token already split in three.
fn header_payload_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(token.len())
}

fn decode_part<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The owner of the raw person key `key` under `secret`.
#[must_use]
pub fn person_owner_with(secret: &[u8], key: &[u8]) -> String {
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(key);
    format!(
        "{PERSON_OWNER_PREFIX}{}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// A user id as an owner: trimmed, 1-200 characters, not naming a key
/// holder or an anonymous session.
///
/// # Errors
/// [`IdentityError::InvalidUserId`].
pub fn user_id(raw: &str) -> Result<String, IdentityError> {
    let id = raw.trim();
    if id.is_empty()
        || id.chars().count() > MAX_USER_ID_CHARS
        || id.starts_with(PERSON_OWNER_PREFIX)
        || id.starts_with("session:")
    {
        return Err(IdentityError::InvalidUserId);
    }
    Ok(id.to_owned())
}

/// Signs a user token for `sub`, valid until `exp` (unix seconds): what an
/// integrator's backend does (any JWT library with HS256 makes the same).
#[must_use]
pub fn sign_user_token(secret: &str, sub: &str, exp: i64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(serde_json::json!({ "sub": sub, "exp": exp }).to_string());
    let signed = format!("{header}.{claims}");
    let mut mac =
        <HmacSha256 as Mac>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!());
    mac.update(signed.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signed}.{signature}")
}

/// Whether `given` is `secret`, in a time that tells nothing about either:
/// both are hashed (SHA-256) and the digests compared whole, so neither a
/// wrong length nor a wrong first byte answers sooner.
#[must_use]
pub fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    let given = Sha256::digest(given);
    let secret = Sha256::digest(secret);
    given
        .iter()
        .zip(secret.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The person-key secret `rose serve` keeps under `dir`: read from
/// [`SECRET_FILE`], or made (32 random bytes, hex) and written there with
/// owner-only permissions on first start. Losing the file makes every
/// person a stranger again (their keys name new owners), so it is part of
/// what to back up with the data directory.
///
/// # Errors
/// The file cannot be read or written.
pub fn load_or_create_secret(dir: &Path) -> io::Result<SecretString> {
    let path = dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().len() >= crate::config::MIN_SECRET_CHARS => {
            return Ok(SecretString::from(text.trim().to_owned()));
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is shorter than {} characters; remove it to make a new one (every person key then names a new person)",
                    path.display(),
                    crate::config::MIN_SECRET_CHARS
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let tmp = dir.join(format!("{SECRET_FILE}.tmp"));
    {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(secret.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(SecretString::from(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn identity() -> Identity {
        Identity {
            person_secret: Some(SecretString::from(SECRET.to_owned())),
            token_secret: Some(SecretString::from(SECRET.to_owned())),
            api_key: Some(SecretString::from("k".repeat(40))),
        }
    }

    #[test]
    fn person_keys_name_one_owner_each_and_refuse_what_is_not_a_key() {
        let id = identity();
        let a = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let b = URL_SAFE_NO_PAD.encode([8u8; 32]);
        let owner = id.person_owner(&a).expect("a key");
        assert!(owner.starts_with("pk_") && owner.len() == 3 + 64);
        assert_eq!(owner, id.person_owner(&a).expect("same key"));
        assert_ne!(owner, id.person_owner(&b).expect("b"));
        assert!(!owner.contains(&a), "the key is not in the owner");
        for bad in [
            "",
            "short",
            &URL_SAFE_NO_PAD.encode([1u8; 31]),
            &URL_SAFE_NO_PAD.encode([1u8; 33]),
            &base64::engine::general_purpose::STANDARD.encode([0xfbu8; 32]),
            &format!("{a}!"),
        ] {
            assert_eq!(
                id.person_owner(bad),
                Err(IdentityError::InvalidPersonKey),
                "{bad:?}"
            );
        }
        let other = Identity {
            person_secret: Some(SecretString::from("x".repeat(32))),
            ..Identity::default()
        };
        assert_ne!(owner, other.person_owner(&a).expect("other secret"));
        assert_eq!(
            Identity::default().person_owner(&a),
            Err(IdentityError::PersonKeysUnavailable)
        );
    }

    #[test]
    fn tokens_are_checked_for_signature_algorithm_and_time() {
        let id = identity();
        let now = 1_800_000_000;
        let good = sign_user_token(SECRET, "user-42", now + 600);
        assert_eq!(id.token_user(&good, now), Ok("user-42".to_owned()));
        let expired = sign_user_token(SECRET, "user-42", now - 61);
        assert!(id.token_user(&expired, now).is_err());
        let forged = sign_user_token(&"y".repeat(32), "user-42", now + 600);
        assert!(id.token_user(&forged, now).is_err());
        // The claims changed under a valid signature.
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD
            .encode(serde_json::json!({"sub": "admin", "exp": now + 600}).to_string());
        assert!(id.token_user(&parts.join("."), now).is_err());
        // alg none, with or without a signature.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(br#"{"sub":"a","exp":9999999999}"#)
        );
        assert!(id.token_user(&none, now).is_err());
        assert!(id.token_user("a.b", now).is_err());
        assert!(id.token_user("", now).is_err());
        let no_exp = {
            let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#);
            let claims = URL_SAFE_NO_PAD.encode(br#"{"sub":"a"}"#);
            let mut mac = <HmacSha256 as Mac>::new_from_slice(SECRET.as_bytes()).expect("key");
            mac.update(format!("{header}.{claims}").as_bytes());
            format!(
                "{header}.{claims}.{}",
                URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
            )
        };
        assert!(id.token_user(&no_exp, now).is_err());
        let borrowed = sign_user_token(SECRET, "pk_abc", now + 600);
        assert!(id.token_user(&borrowed, now).is_err());
        assert!(Identity::default().token_user(&good, now).is_err());
    }

    #[test]
    fn the_api_key_is_matched_whole() {
        let id = identity();
        assert!(id.is_api_key("k".repeat(40).as_bytes()));
        assert!(!id.is_api_key("k".repeat(39).as_bytes()));
        assert!(!id.is_api_key(format!(" {}", "k".repeat(40)).as_bytes()));
        assert!(!Identity::default().is_api_key(b""));
    }

    #[test]
    fn the_served_secret_is_made_once_and_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let first = load_or_create_secret(dir.path()).expect("made");
        let again = load_or_create_secret(dir.path()).expect("read");
        assert_eq!(first.expose_secret(), again.expose_secret());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(SECRET_FILE))
                .expect("file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "owner only");
        }
        std::fs::write(dir.path().join(SECRET_FILE), "short").expect("write");
        assert!(load_or_create_secret(dir.path()).is_err());
    }
}
