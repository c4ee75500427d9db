//! The JSON-mode answer: Rose's memory extraction, done by rules so that
//! keyless runs and the tests exercise memory end to end. It answers the
//! same JSON the real prompt asks the model for:
//!
//! ```json
//! {"profile": [{"op": "add", "field": "name", "text": "Their name is Anna."}],
//!  "memories": ["Their mother loved roses."]}
//! ```
//!
//! It reads what follows "The person just said:" in the last user message
//! (or all of it), one sentence at a time, and recognises, in this order
//! (one finding per sentence):
//! - a name: "my name is X", "call me X" → profile `name`, "Their name is X.";
//! - a loss: "my mother/mum/mom/father/dad/husband/wife/partner/son/daughter/
//!   brother/sister/friend/grandmother/grandfather/dog/cat … died / passed
//!   (away)" → profile `grieving`, the sentence in the third person
//!   ("Their mother died last spring.");
//! - a date: a sentence naming a month, a birthday or an anniversary →
//!   profile `date`;
//! - a love: "… loved …" → a memory, in the third person
//!   ("Their mother loved roses.").
//!
//! Everything else answers `{"profile": [], "memories": []}`.

use serde_json::{Value, json};

const RELATIONS: [&str; 18] = [
    "mother",
    "mum",
    "mom",
    "father",
    "dad",
    "husband",
    "wife",
    "partner",
    "son",
    "daughter",
    "brother",
    "sister",
    "friend",
    "grandmother",
    "grandfather",
    "dog",
    "cat",
    "baby",
];

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// The extraction answer for `last_user`.
pub(crate) fn extraction_json(last_user: &str) -> String {
    let said = last_user
        .rsplit_once("The person just said:")
        .map_or(last_user, |(_, said)| said);
    let mut profile: Vec<Value> = Vec::new();
    let mut memories: Vec<String> = Vec::new();
    for sentence in sentences(said) {
        let lower = sentence.to_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| !c.is_alphanumeric() && c != '\'')
            .filter(|w| !w.is_empty())
            .collect();
        if let Some(name) = name_in(&sentence) {
            profile.push(
                json!({"op": "add", "field": "name", "text": format!("Their name is {name}.")}),
            );
        } else if is_loss(&words) {
            profile
                .push(json!({"op": "add", "field": "grieving", "text": third_person(&sentence)}));
        } else if words.iter().any(|w| {
            MONTHS.contains(w) || w.starts_with("birthday") || w.starts_with("anniversary")
        }) {
            profile.push(json!({"op": "add", "field": "date", "text": third_person(&sentence)}));
        } else if words.contains(&"loved") {
            memories.push(third_person(&sentence));
        }
    }
    json!({ "profile": profile, "memories": memories }).to_string()
}

/// The sentences of `text`, trimmed, without their final punctuation.
fn sentences(text: &str) -> Vec<String> {
    text.split(['.', '!', '?', '\n'])
        .map(|s| s.trim().trim_matches(',').trim())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// "my <relation> … died/passed".
fn is_loss(words: &[&str]) -> bool {
    let related = words
        .windows(2)
        .any(|w| w[0] == "my" && RELATIONS.contains(&w[1]));
    related
        && words
            .iter()
            .any(|w| *w == "died" || w.starts_with("passed") || *w == "lost")
}

/// The name after "my name is" or "call me", as written.
fn name_in(sentence: &str) -> Option<String> {
    for cue in ["my name is ", "call me "] {
        // ASCII lowercasing keeps byte offsets aligned with the original text.
        let Some(at) = sentence.to_ascii_lowercase().find(cue) else {
            continue;
        };
        let rest = sentence.get(at + cue.len()..)?;
        let word: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_alphabetic() || *c == '-' || *c == '\'')
            .collect();
        let word = word.trim_matches(|c| c == '-' || c == '\'');
        if !word.is_empty() {
            return Some(word.to_owned());
        }
    }
    None
}

/// `sentence` said of the person rather than by them, capitalised, ending
/// with a full stop.
fn third_person(sentence: &str) -> String {
    let swapped: Vec<String> = sentence
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(|word| {
            let (core, tail) = word.split_at(
                word.find(|c: char| !c.is_alphanumeric() && c != '\'')
                    .unwrap_or(word.len()),
            );
            let swapped = match core.to_lowercase().as_str() {
                "my" => "their",
                "i" => "they",
                "i'm" => "they're",
                "i've" => "they've",
                "i'd" => "they'd",
                "i'll" => "they'll",
                "me" => "them",
                "mine" => "theirs",
                "myself" => "themselves",
                "am" => "are",
                _ => core,
            };
            format!("{swapped}{tail}")
        })
        .collect();
    let joined = swapped.join(" ");
    let mut chars = joined.chars();
    let capitalised: String = chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default();
    format!("{capitalised}.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(text: &str) -> Value {
        serde_json::from_str(&extraction_json(text)).expect("json")
    }

    #[test]
    fn names_losses_dates_and_loves_are_found() {
        let a = answer(
            "Profile:\n(empty)\n\nThe person just said:\nHello, my name is Anna. My mother died last spring.",
        );
        assert_eq!(
            a["profile"],
            json!([
                {"op": "add", "field": "name", "text": "Their name is Anna."},
                {"op": "add", "field": "grieving", "text": "Their mother died last spring."}
            ])
        );
        assert_eq!(a["memories"], json!([]));
        let b = answer(
            "My husband Tom passed away in 2023. Her birthday is on the 4th of June! She loved roses",
        );
        assert_eq!(
            b["profile"][0]["text"],
            "Their husband Tom passed away in 2023."
        );
        assert_eq!(b["profile"][1]["field"], "date");
        assert_eq!(
            b["profile"][1]["text"],
            "Her birthday is on the 4th of June."
        );
        assert_eq!(b["memories"], json!(["She loved roses."]));
        assert_eq!(
            answer("My dad loved fishing with me")["memories"],
            json!(["Their dad loved fishing with them."])
        );
        assert_eq!(
            answer("call me Jean-Luc")["profile"][0]["text"],
            "Their name is Jean-Luc."
        );
    }

    #[test]
    fn ordinary_talk_keeps_nothing() {
        for text in [
            "I feel tired today",
            "What is the weather like?",
            "I feel like I died with her",
            "my name is ",
            "",
        ] {
            assert_eq!(
                answer(text),
                json!({"profile": [], "memories": []}),
                "{text}"
            );
        }
    }
}
