//! Cutting a reply into sentences as its tokens arrive, so each sentence
//! can be spoken as soon as it is complete.
//!
//! A sentence ends at `.`, `!` or `?` (with any closing quotes or brackets
//! after it), or at a line break, when what follows — after the spaces — is a
//! character that starts a new sentence: a capital letter, a letter of a
//! script without case (Arabic, Hebrew, Devanagari, CJK…), a digit, an
//! opening quote or bracket. The full stops of scripts written without
//! spaces or with their own marks end a sentence whatever follows: `。`,
//! `！`, `？` (Chinese, Japanese), `।` (Devanagari), `؟` (Arabic), `።`
//! (Ethiopic). Not an end:
//! - an abbreviation (`Dr.`, `Mrs.`, `e.g.`, … see [`ABBREVIATIONS`]) or a
//!   single initial (`J. R. Smith`);
//! - a decimal (`3.5`: no space after the point);
//! - an ellipsis (`...` or `…`), which trails off rather than ends;
//! - a point followed by a lower-case word (`etc. and so on`).
//!
//! A run of more than [`MAX_CHARS`] characters without an end is cut at its
//! last clause boundary (`,`, `;`, `:`, a dash) past [`MIN_CLAUSE_CHARS`],
//! else at its last space, so speech never waits for a paragraph.
//!
//! The decision at a point needs the next visible character, so a sentence
//! is released when that character arrives (or at [`Splitter::finish`]).

/// Longest run spoken without a sentence end, in characters.
pub const MAX_CHARS: usize = 200;
/// Shortest piece a long run is cut into at a clause boundary.
pub const MIN_CLAUSE_CHARS: usize = 40;

/// Words whose point does not end a sentence (compared without case and
/// without their final point).
pub const ABBREVIATIONS: [&str; 24] = [
    "mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "mt", "vs", "e.g", "i.e", "cf", "approx",
    "no", "fig", "dept", "est", "inc", "ltd", "jan", "feb", "aug", "sept",
];

/// Cuts a stream of text into sentences.
#[derive(Debug, Default)]
pub struct Splitter {
    pending: String,
}

impl Splitter {
    /// A splitter with nothing pending.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `delta`; returns the sentences it completed, trimmed, in order.
    pub fn push(&mut self, delta: &str) -> Vec<String> {
        self.pending.push_str(delta);
        let mut out = Vec::new();
        while let Some(end) = self.next_end() {
            let rest = self.pending.split_off(end);
            let sentence = std::mem::replace(&mut self.pending, rest);
            let sentence = sentence.trim();
            if !sentence.is_empty() {
                out.push(sentence.to_owned());
            }
            let kept = self.pending.trim_start().len();
            self.pending.drain(..self.pending.len() - kept);
        }
        out
    }

    /// What is left once the stream has ended, if anything.
    #[must_use]
    pub fn finish(self) -> Option<String> {
        let rest = self.pending.trim();
        (!rest.is_empty()).then(|| rest.to_owned())
    }

    /// The byte offset just past the first complete sentence, if one is.
    fn next_end(&self) -> Option<usize> {
        let text = self.pending.as_str();
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        for (i, &(at, c)) in chars.iter().enumerate() {
            let ends = match c {
                '.' | '!' | '?' => true,
                '\n' => i > 0,
                _ => false,
            };
            let marked = is_script_stop(c);
            if !ends && !marked {
                continue;
            }
            // Closing quotes and brackets belong to the sentence.
            let mut j = i + 1;
            while j < chars.len() && matches!(chars[j].1, '"' | '\'' | ')' | ']' | '”' | '’' | '»')
            {
                j += 1;
            }
            let close = chars.get(j).map_or(text.len(), |&(b, _)| b);
            // The next visible character decides; without it, wait.
            let mut k = j;
            let mut spaced = c == '\n';
            while k < chars.len() && chars[k].1.is_whitespace() {
                spaced = true;
                k += 1;
            }
            let Some(&(_, next)) = chars.get(k) else {
                break;
            };
            if marked {
                return Some(close);
            }
            if !spaced || !starts_sentence(next) {
                continue;
            }
            if c == '.' && !ends_with_full_stop(&text[..at]) {
                continue;
            }
            return Some(close);
        }
        self.long_run_cut()
    }

    /// For a run past [`MAX_CHARS`] with no end: where to cut it.
    fn long_run_cut(&self) -> Option<usize> {
        let text = self.pending.as_str();
        if text.chars().count() <= MAX_CHARS {
            return None;
        }
        let head_end = text
            .char_indices()
            .nth(MAX_CHARS)
            .map_or(text.len(), |(b, _)| b);
        let head = &text[..head_end];
        let clause = head
            .char_indices()
            .filter(|&(b, c)| {
                matches!(c, ',' | ';' | ':' | '—' | '–')
                    && head[..b].chars().count() >= MIN_CLAUSE_CHARS
            })
            .map(|(b, c)| b + c.len_utf8())
            .next_back();
        clause
            .or_else(|| head.rfind(' ').filter(|&b| b > 0))
            .or(Some(head_end))
    }
}

/// A full stop of a script that marks its sentences its own way.
fn is_script_stop(c: char) -> bool {
    matches!(c, '。' | '！' | '？' | '।' | '॥' | '؟' | '።' | '｡')
}

/// Whether `c` can begin a sentence.
fn starts_sentence(c: char) -> bool {
    c.is_uppercase()
        || (c.is_alphabetic() && !c.is_lowercase())
        || c.is_ascii_digit()
        || matches!(c, '"' | '\'' | '(' | '[' | '“' | '‘' | '«' | '¿' | '¡')
}

/// Whether the point after `before` is a full stop: not an ellipsis, an
/// abbreviation or an initial.
fn ends_with_full_stop(before: &str) -> bool {
    if before.ends_with('.') || before.ends_with('…') {
        return false;
    }
    let word = before
        .rsplit(|c: char| c.is_whitespace() || matches!(c, '(' | '"' | '“'))
        .next()
        .unwrap_or("");
    if word.chars().count() == 1 && word.chars().all(char::is_uppercase) {
        return false;
    }
    let word = word.to_lowercase();
    !ABBREVIATIONS.contains(&word.as_str())
}

/// Cuts a whole text at once (what streaming it token by token gives).
#[must_use]
pub fn split(text: &str) -> Vec<String> {
    let mut splitter = Splitter::new();
    let mut out = splitter.push(text);
    out.extend(splitter.finish());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_cases() {
        let table: &[(&str, &[&str])] = &[
            (
                "Hello there. How are you?",
                &["Hello there.", "How are you?"],
            ),
            (
                "I'm here! Take your time.",
                &["I'm here!", "Take your time."],
            ),
            (
                "Dr. Smith said it was Mrs. Lee's idea.",
                &["Dr. Smith said it was Mrs. Lee's idea."],
            ),
            (
                "Things like walks, e.g. Sunday ones, help. They do.",
                &["Things like walks, e.g. Sunday ones, help.", "They do."],
            ),
            (
                "It took 3.5 years. Then spring.",
                &["It took 3.5 years.", "Then spring."],
            ),
            (
                "I don't know... Maybe tomorrow. Or not.",
                &["I don't know... Maybe tomorrow.", "Or not."],
            ),
            ("Well… Perhaps.", &["Well… Perhaps."]),
            (
                "She said \"I love you.\" Then she slept.",
                &["She said \"I love you.\"", "Then she slept."],
            ),
            (
                "Books, music, etc. and walks. Yes.",
                &["Books, music, etc. and walks.", "Yes."],
            ),
            (
                "J. R. Tolkien wrote it. Good.",
                &["J. R. Tolkien wrote it.", "Good."],
            ),
            ("First line\nSecond line", &["First line", "Second line"]),
            ("a list\n- item", &["a list\n- item"]),
            ("Really?! Yes.", &["Really?!", "Yes."]),
            (
                "Grief comes in waves (it really does.) Rest now.",
                &["Grief comes in waves (it really does.)", "Rest now."],
            ),
            ("It was 1999. 2000 came.", &["It was 1999.", "2000 came."]),
            ("No end in sight", &["No end in sight"]),
            ("no capitals. none at all", &["no capitals. none at all"]),
            (
                "«Je t'aime.» Puis elle dormit.",
                &["«Je t'aime.»", "Puis elle dormit."],
            ),
            ("Привет. Как ты?", &["Привет.", "Как ты?"]),
            (
                "我很想她。她走了三年了。",
                &["我很想她。", "她走了三年了。"],
            ),
            (
                "お元気ですか？私は元気です。",
                &["お元気ですか？", "私は元気です。"],
            ),
            (
                "مرحبا. كيف حالك؟ أنا هنا.",
                &["مرحبا.", "كيف حالك؟", "أنا هنا."],
            ),
            ("मैं यहाँ हूँ। तुम कैसे हो?", &["मैं यहाँ हूँ।", "तुम कैसे हो?"]),
            ("שלום. אני כאן.", &["שלום.", "אני כאן."]),
            ("It cost $3.50. Fine.", &["It cost $3.50.", "Fine."]),
            ("   ", &[]),
        ];
        for (text, want) in table {
            assert_eq!(split(text), *want, "{text:?}");
        }
    }

    #[test]
    fn streamed_tokens_give_the_same_sentences() {
        for text in [
            "Dr. Lee was kind. It took 3.5 years... Then I smiled! \"Really?\" Yes.",
            "我很想她。她走了三年了。 Привет. Как ты? مرحبا. كيف حالك؟",
        ] {
            streamed_matches_whole(text);
        }
    }

    fn streamed_matches_whole(text: &str) {
        let whole = split(text);
        assert!(whole.len() > 2, "{whole:?}");
        for size in [1, 2, 3, 5, 8] {
            let mut splitter = Splitter::new();
            let mut got = Vec::new();
            let chars: Vec<char> = text.chars().collect();
            for chunk in chars.chunks(size) {
                got.extend(splitter.push(&chunk.iter().collect::<String>()));
            }
            got.extend(splitter.finish());
            assert_eq!(got, whole, "chunks of {size}");
        }
    }

    #[test]
    fn a_sentence_is_released_when_the_next_one_starts() {
        let mut splitter = Splitter::new();
        assert!(
            splitter.push("I hear you.").is_empty(),
            "the next word decides"
        );
        assert!(splitter.push(" ").is_empty());
        assert_eq!(splitter.push("Take"), vec!["I hear you.".to_owned()]);
        assert_eq!(splitter.finish(), Some("Take".to_owned()));
    }

    #[test]
    fn long_runs_are_cut_at_a_clause() {
        let clause = "and the light came through the window in the morning";
        let text = format!("{clause}, {clause}, {clause}, {clause} and more");
        let parts = split(&text);
        assert!(parts.len() >= 2, "{parts:?}");
        for part in &parts {
            assert!(part.chars().count() <= MAX_CHARS, "{part}");
        }
        assert!(parts[0].ends_with(','), "{parts:?}");
        assert_eq!(parts.join(" "), text);
        let words = "word ".repeat(80);
        let parts = split(&words);
        assert!(parts.iter().all(|p| p.chars().count() <= MAX_CHARS));
        assert_eq!(parts.join(" "), words.trim());
    }
}
