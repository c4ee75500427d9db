use super::*;

/// Phrasings in several registers (plain, formal, clinical, slang, text
/// speak, religious, indirect), with the mark each must get: `true` for a
/// crisis turn, `false` for an ordinary one (mostly grief, which must stay
/// unmarked). The comment after a row says the choice it pins.
const TABLE: &[(&str, bool)] = &[
    // Explicit, plain.
    ("I want to kill myself.", true),
    ("I'm going to end my life.", true),
    ("I've been thinking about suicide a lot lately.", true),
    ("I just want to die.", true),
    ("Sometimes I think about ending it all.", true),
    ("I don't want to be alive anymore.", true),
    ("I don't want to be here anymore.", true),
    ("I tried to take my own life last year.", true),
    ("I've been hurting myself again.", true),
    ("I started cutting again last week.", true),
    ("I'm thinking about taking an overdose.", true),
    ("I've been saving up my sleeping pills.", true),
    (
        "I keep thinking about jumping off the bridge near our house.",
        true,
    ),
    // Formal and clinical.
    ("I have been experiencing suicidal ideation.", true),
    ("I have had thoughts of ending my life.", true),
    (
        "My therapist says it's self-harm, but it's the only thing that helps.",
        true,
    ),
    ("I have a passive death wish.", true),
    // Slang, text speak and misspellings.
    ("i wanna kms", true),
    ("honestly i might just unalive myself", true),
    ("sometimes i feel sucidal", true),
    ("i want 2 die", true),
    ("gonna top myself tonight", true),
    ("I want to kill my self", true),
    ("I'M SO DONE WITH LIFE", true),
    ("I don’t want to wake up tomorrow.", true),
    // Wishes to be dead.
    ("I wish I was dead.", true),
    ("I wish I had died with her.", true),
    ("I'd rather be dead than live without him.", true),
    ("I hope I don't wake up tomorrow.", true),
    ("I want to go to sleep and never wake up.", true),
    ("I pray every night that God takes me.", true),
    ("I'm so tired of being alive.", true),
    ("I don't care if I die.", true),
    ("What's the point of living without him?", true),
    ("There's no reason to live anymore.", true),
    ("Life isn't worth living without her.", true),
    ("I don't want to live without her.", true),
    // Indirect signs.
    ("I won't be a burden much longer.", true),
    ("Everyone would be better off without me.", true),
    ("I've been giving my things away.", true),
    ("I've put my affairs in order.", true),
    ("I wrote goodbye letters to my kids.", true),
    ("I won't be around much longer, so it doesn't matter.", true),
    // Reunion with someone who died: marked (the only way is one's own death).
    ("I want to be with her again.", true),
    ("I'll be with him soon.", true),
    ("I just want to join my husband.", true),
    ("I want to go where she is.", true),
    // Someone else's suicide, and then the speaker's own thought.
    (
        "My mother killed herself and I keep thinking about doing the same.",
        true,
    ),
    (
        "Since losing him to suicide I think of suicide myself.",
        true,
    ),
    // The speaker's own past attempt is a risk today.
    ("Ive attempted suicide twice.", true),
    // Negation is not parsed: the resource is still offered, gently.
    ("I would never hurt myself.", true),
    ("I'm not suicidal, just so tired.", true),
    // A frustration idiom that names the speaker's own death: marked.
    ("I could kill myself for forgetting her birthday.", true),
    // Ordinary grief: unmarked.
    ("I feel like I died with her.", false),
    ("A part of me died when he did.", false),
    ("This grief is killing me.", false),
    ("I'm dead inside since she passed.", false),
    ("I can't live without her.", false),
    ("I can't do this anymore, the house is so quiet.", false),
    ("I wish I could hug her one more time.", false),
    ("I want to see her again, even just in a dream.", false),
    ("I miss being with him in the mornings.", false),
    ("I wish she hadn't died.", false),
    ("I wish I had been there when he died.", false),
    ("I gave away her clothes last week.", false),
    ("I'm giving my mother's things to the charity shop.", false),
    // Someone else's suicide or overdose: grief, not the speaker's risk.
    ("My mother killed herself last year.", false),
    ("My brother died by suicide two years ago.", false),
    ("I lost my son to suicide.", false),
    ("Her suicide still doesn't make sense to me.", false),
    ("My dad died of an overdose.", false),
    ("Tom took an overdose last summer and never woke up.", false),
    ("Mum's overdose was an accident, they said.", false),
    ("My sister was suicidal for years before she died.", false),
    ("He took his own life in March.", false),
    ("I go to a suicide loss support group on Tuesdays.", false),
    // Idioms and everyday words.
    ("I threw myself into work after the funeral.", false),
    ("I've cut myself off from my friends.", false),
    ("I'm burning myself out caring for dad.", false),
    ("I hurt myself gardening yesterday.", false),
    ("I nearly killed myself laughing at his old jokes.", false),
    ("I could kill for a cup of tea.", false),
    ("I'm dying to see my grandchildren.", false),
    ("I'm dead tired.", false),
    ("Quitting would be career suicide.", false),
    ("I don't want to live in this house anymore.", false),
    ("I've been cutting back on wine.", false),
    ("I need to end it with him, he drinks too much.", false),
    ("I want to take my life back.", false),
    (
        "I took all my pills this morning, like the doctor said.",
        false,
    ),
    ("I want to join her for lunch on Sunday.", false),
    ("I'll see her soon, she visits on Fridays.", false),
    // Feeling a burden, without a sign of leaving: not marked (a limit).
    ("I feel like a burden to my kids.", false),
    ("Some mornings I still set out two cups.", false),
    ("Thank you, Rose.", false),
];

#[test]
fn the_phrasing_table_is_marked_as_documented() {
    let mut wrong = Vec::new();
    for (text, expected) in TABLE {
        let rule = crisis_rule(text);
        if rule.is_some() != *expected {
            wrong.push(format!("{text:?}: expected {expected}, got {rule:?}"));
        }
    }
    assert!(
        TABLE.len() >= 40,
        "the table holds {} phrasings",
        TABLE.len()
    );
    assert!(wrong.is_empty(), "misjudged:\n{}", wrong.join("\n"));
}

#[test]
fn every_rule_is_named_and_the_table_reaches_most_of_them() {
    let reached: std::collections::HashSet<&str> =
        TABLE.iter().filter_map(|(t, _)| crisis_rule(t)).collect();
    for rule in &reached {
        assert!(classify::RULES.contains(rule), "{rule} is not in RULES");
    }
    assert!(
        reached.len() >= classify::RULES.len() - 4,
        "the table reaches {reached:?}"
    );
}

#[test]
fn silence_and_empty_text_are_not_marked() {
    for text in ["", "   ", "[Music]", "uh um", "...", "you"] {
        assert_eq!(crisis_rule(text), None, "{text:?}");
    }
}

#[test]
fn the_default_resource_is_international_and_valid() {
    let resource = CrisisResource::international();
    assert!(resource.url.starts_with("https://"));
    assert!(resource.text.contains("findahelpline.com"));
    assert_eq!(
        CrisisResource::parse(
            &resource
                .line()
                .replace(&format!(" {}", resource.url), &format!("|{}", resource.url))
        ),
        Ok(resource)
    );
}

#[test]
fn resources_parse_from_json_or_text_and_url() {
    let json = r#"{"text": "Call or text 988, any time.", "url": "tel:988"}"#;
    let r = CrisisResource::parse(json).expect("json");
    assert_eq!(r.text, "Call or text 988, any time.");
    assert_eq!(r.url, "tel:988");
    let r = CrisisResource::parse(" Samaritans | 116 123 | https://www.samaritans.org ")
        .expect("text|url");
    assert_eq!(r.text, "Samaritans | 116 123");
    assert_eq!(r.url, "https://www.samaritans.org");
    for bad in [
        "",
        "no url here",
        "|https://example.org",
        "Help|ftp://example.org",
        "Help|example.org",
        "Help|https://",
        "Help|tel:abc",
        "Help|https://exa mple.org",
        r#"{"text": "Help"}"#,
        "Line\u{7}bell|https://example.org",
    ] {
        assert!(CrisisResource::parse(bad).is_err(), "{bad:?} was accepted");
    }
    let long = format!("{}|https://example.org", "a".repeat(MAX_RESOURCE_TEXT + 1));
    assert!(CrisisResource::parse(&long).is_err());
}

#[test]
fn the_resource_is_appended_once_and_not_spoken_as_a_url() {
    let resource = CrisisResource::international();
    let reply = with_resource("I'm so glad you told me. I'm here with you.", &resource);
    assert!(reply.ends_with(&resource.line()), "{reply}");
    assert_eq!(with_resource(&reply, &resource), reply, "appended once");
    let said = spoken(&reply, &resource);
    assert!(!said.contains("https://"), "{said}");
    assert!(said.ends_with("findahelpline.com."), "{said}");
    assert_eq!(spoken("No resource here.", &resource), "No resource here.");
    assert_eq!(with_resource("  ", &resource), resource.line());
}
