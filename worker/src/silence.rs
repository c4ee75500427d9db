//! Silent turns: what speech-to-text hears when nothing was said, and the
//! gentle prompt Rose answers it with, without a model call.

use rose_shared::domain::Job;

use crate::persona::SILENT_REPLIES;

/// What speech-to-text returns for silence, breath and room noise rather than
/// for words: nothing, bracketed sound labels (`[Music]`, `(silence)`,
/// `*noise*`), hesitation sounds, and the phrases Whisper is known to invent
/// on silence ("you", "thanks for watching"). "Thank you" alone is *not* in
/// the list: said to Rose, it is a real turn.
#[must_use]
pub fn is_silent(text: &str) -> bool {
    const FILLER: [&str; 16] = [
        "you",
        "uh",
        "um",
        "umm",
        "hmm",
        "mm",
        "mhm",
        "ah",
        "oh",
        "eh",
        "er",
        "thanks for watching",
        "thank you for watching",
        "thank you so much for watching",
        "please subscribe",
        "bye",
    ];
    let mut words = String::with_capacity(text.len());
    let mut depth = 0i32;
    for c in text.chars() {
        match c {
            '[' | '(' | '{' | '<' => depth += 1,
            ']' | ')' | '}' | '>' => depth = (depth - 1).max(0),
            _ if depth > 0 => {}
            '*' | '♪' => {}
            c if c.is_alphanumeric() || c == '\'' || c == '’' => {
                words.extend(c.to_lowercase());
            }
            _ => words.push(' '),
        }
    }
    let normalised = words.split_whitespace().collect::<Vec<_>>().join(" ");
    normalised.is_empty()
        || FILLER.contains(&normalised.as_str())
        || normalised.split(' ').all(|w| {
            matches!(
                w,
                "uh" | "um" | "umm" | "hmm" | "mm" | "mhm" | "ah" | "oh" | "eh" | "er"
            )
        })
}

/// One of Rose's gentle prompts for a silent turn, varied by job.
pub(crate) fn silent_reply(job: &Job) -> &'static str {
    let pick = job.id.to_string().bytes().map(usize::from).sum::<usize>();
    SILENT_REPLIES[pick % SILENT_REPLIES.len()]
}
