//! What the simulator says: deterministic transcripts and chat replies, and
//! the random ids providers put on answers.
//!
//! Determinism comes from SHA-256: the same audio bytes always transcribe to
//! the same phrase, the same last user message always gets the same reply.
//! Replies announce that they are simulated, so nobody mistakes them for a
//! real model.

use rand::Rng as _;
use sha2::{Digest as _, Sha256};

/// Transcripts for audio without an `ICMT` comment.
const PHRASES: [&str; 8] = [
    "I keep thinking about my father.",
    "I miss her more than I can say.",
    "Some days the house feels so quiet.",
    "I found his old letters today.",
    "The anniversary is coming up and I don't know how to feel.",
    "I wish I had said goodbye properly.",
    "Everyone says it gets easier, but it hasn't yet.",
    "I dreamed about my grandmother last night.",
];

const ACKNOWLEDGE: [&str; 6] = [
    "I hear how much you miss them.",
    "Thank you for telling me this.",
    "That sounds like a heavy thing to carry.",
    "What you feel makes sense.",
    "I'm here with you in this.",
    "Grief like this is a sign of how deeply you loved.",
];

const INVITE: [&str; 6] = [
    "Let's breathe together for a moment.",
    "Would you like to tell me a little more about them?",
    "There is no right way to feel today.",
    "Be gentle with yourself tonight.",
    "What is one memory of them that feels warm right now?",
    "Take all the time you need.",
];

const CLOSE: [&str; 4] = [
    "I'm listening.",
    "You are not alone in this.",
    "We can go as slowly as you like.",
    "Your feelings are welcome here.",
];

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The transcript of `audio`: its WAV `ICMT` comment, else a fixed phrase
/// chosen by the SHA-256 of its bytes.
pub(crate) fn transcript(audio: &[u8]) -> String {
    if let Some(comment) = rose_shared::audio::wav_info(audio).and_then(|i| i.comment) {
        return comment;
    }
    let hash = digest(audio);
    PHRASES[usize::from(hash[0]) % PHRASES.len()].to_owned()
}

/// One to three short, warm sentences, chosen by the hash of `last_user`.
pub(crate) fn reply(last_user: &str) -> String {
    let hash = digest(last_user.as_bytes());
    let sentences = 1 + usize::from(hash[0]) % 3;
    let mut out = String::from("(Simulated reply) ");
    out.push_str(ACKNOWLEDGE[usize::from(hash[1]) % ACKNOWLEDGE.len()]);
    if sentences >= 2 {
        out.push(' ');
        out.push_str(INVITE[usize::from(hash[2]) % INVITE.len()]);
    }
    if sentences == 3 {
        out.push(' ');
        out.push_str(CLOSE[usize::from(hash[3]) % CLOSE.len()]);
    }
    out
}

/// About four characters a token, at least one.
pub(crate) fn tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4).max(1)
}

/// A random lowercase id like Groq's: `req_01j…` (26 characters after the prefix).
pub(crate) fn random_id(prefix: &str, len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut rng = rand::rng();
    let mut id = String::with_capacity(prefix.len() + len);
    id.push_str(prefix);
    for _ in 0..len {
        id.push(char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_is_the_transcript() {
        let wav = rose_shared::audio::build_wav(8_000, &[0; 800], Some("My dog died on Tuesday."));
        assert_eq!(transcript(&wav), "My dog died on Tuesday.");
        let plain = rose_shared::audio::build_wav(8_000, &[0; 800], None);
        assert!(PHRASES.contains(&transcript(&plain).as_str()));
        assert_eq!(transcript(&plain), transcript(&plain));
    }

    #[test]
    fn replies_are_deterministic_and_labelled() {
        let a = reply("I miss my dad");
        assert_eq!(a, reply("I miss my dad"));
        assert!(a.starts_with("(Simulated reply) "));
        // Different messages reach different replies.
        let distinct: std::collections::HashSet<String> =
            (0..40).map(|i| reply(&format!("message {i}"))).collect();
        assert!(distinct.len() > 5, "{distinct:?}");
    }

    #[test]
    fn counts_tokens() {
        assert_eq!(tokens(0), 1);
        assert_eq!(tokens(4), 1);
        assert_eq!(tokens(5), 2);
    }

    #[test]
    fn ids_have_the_prefix() {
        let id = random_id("req_", 26);
        assert!(id.starts_with("req_") && id.len() == 30);
        assert_ne!(id, random_id("req_", 26));
    }
}
