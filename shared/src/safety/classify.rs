//! The crisis pattern set: does a turn speak of the speaker ending their
//! life or harming themselves?
//!
//! A transparent, tested set of English phrase patterns rather than a
//! model: every decision can be read here and pinned by the table in
//! `tests.rs`. It runs in three steps.
//!
//! 1. **Normalise.** Capitalised names followed by a verb of dying
//!    ("Tom died of…", "Tom's overdose") become `someone`, so a named
//!    person counts as another person; then the text is lowercased,
//!    apostrophes dropped (`don't` → `dont`, `I'm` → `im`), punctuation made
//!    space, and split into clauses at `. ! ? ; :` and line breaks. Common
//!    spellings are folded together: `my self`/`meself`/`myslef` → `myself`,
//!    `wanna` → `want to`, `gonna` → `going to`, `2` → `to`, `kms` →
//!    `kill myself`, `do not` → `dont`, `i am` → `im`, `sewerslide` →
//!    `suicide`; the word *suicide* is matched with its usual misspellings
//!    (`sucide`, `suicde`, `suiside`, `sucidal`, …).
//! 2. **Set aside what is not the speaker's own risk** (each such span is
//!    replaced by a blank before matching):
//!    - someone else's suicide or overdose, told as a loss: "I lost my son to
//!      suicide", "she died by suicide", "her suicide", "the suicide of my
//!      brother", "my dad died of an overdose", "my sister was suicidal",
//!      "a suicide loss group" —
//!      unless the span itself has the speaker as subject ("since losing him
//!      I think of suicide" stays);
//!    - idioms: "career suicide", "suicide squad", "killed myself laughing",
//!      "cut myself off from everyone", "burning myself out", "shot myself in
//!      the foot", small accidents ("hurt myself gardening", "cut myself
//!      shaving"), "end it with him" (a relationship), "take my life back",
//!      "live in/with/alone…" (where one lives), "rather die than go…",
//!      "cutting back".
//! 3. **Match** the speaker's own risk (the rule names are in [`RULES`]):
//!    explicit words (suicide and self-harm in every register, from
//!    "suicidal ideation" to "kms" and "unalive myself"; "kill/hurt/cut/
//!    starve/top/off myself"; "end/take my (own) life"; "end it all";
//!    overdose and pills; means such as jumping off a bridge or a noose);
//!    wishes to be dead ("I want to die", "I wish I was dead", "I wish I had
//!    died with her", "I'd rather be dead", "I hope I don't wake up", "I
//!    pray God takes me"); not wanting to live ("I don't want to be alive
//!    anymore", "I don't want to be here anymore", "I don't want to live
//!    without her", "what's the point of living", "tired of being alive",
//!    "I don't care if I die"); and the indirect signs crisis services teach
//!    people to hear: being a burden ("I won't be a burden much longer",
//!    "they'd be better off without me"), goodbyes ("I wrote goodbye
//!    letters", "I won't be around much longer"), putting affairs in order,
//!    giving one's things away, and wishing to be reunited with someone who
//!    died ("I want to be with her again", "I'll be with him soon", "I want
//!    to join my husband", "I want to go where she is"). A reunion wish is
//!    marked because, with a person who died, the only way to it is the
//!    speaker's own death; longing for the past is not ("I wish I could hug
//!    her one more time", "I miss being with him", "I want to see her
//!    again"). "Doing the same" ("…and I keep thinking about doing the
//!    same") is marked when the turn speaks of a death.
//!
//! Choices, made to lean towards offering help when a phrase is about the
//! speaker's own death or harm:
//! - **Negation is not parsed.** "I would never hurt myself" and "I'm not
//!   suicidal" are marked: denials are common in people at risk, and the
//!   marked reply only offers a line gently (its guidance asks the model to
//!   believe the person and leave the door open).
//! - **Idioms of grief are not marked**: "I feel like I died with her", "a
//!   part of me died", "this grief is killing me", "I'm dead inside", "I
//!   can't live without her", "I can't do this anymore". They are how grief
//!   speaks, and a crisis line on each would tell a grieving person they are
//!   not being heard. Frustration idioms that do name the speaker's own
//!   death ("I could kill myself for forgetting") are marked all the same.
//! - **Someone else's suicide is not marked** ("my mother killed herself
//!   last year"): it is grief, and a line on every mention of how someone
//!   died would fall on every turn of a suicide-loss survivor. People
//!   bereaved by suicide are at higher risk themselves, so anything of their
//!   own in the same turn ("…and I think about doing the same") is marked.
//!   Another person's *current* risk ("my son talks about killing himself")
//!   is not marked either: the mark is the speaker's risk; Rose's persona
//!   still points towards help.
//!
//! Limits: English only; a phrase the set does not know is not marked (the
//! persona still asks the model to point towards help); sarcasm and quoted
//! speech are read literally; a few everyday phrases are marked although
//! they rarely mean risk ("I don't want to wake up tomorrow", "I'd rather be
//! dead than …" with an unlisted activity).

use std::sync::LazyLock;

use regex::{Captures, Regex};

/// Words for the people someone may have lost.
const KIN: &str = "mum|mom|mommy|mummy|mother|mam|mama|dad|daddy|father|papa|husband|hubby|\
    wife|partner|spouse|son|daughter|brother|sister|sibling|twin|child|kid|baby|boy|girl|friend|\
    bestie|boyfriend|girlfriend|fiance|fiancee|cousin|uncle|aunt|auntie|grandma|grandmother|\
    grandpa|grandfather|granny|gran|nan|nana|grandson|granddaughter|nephew|niece|stepdad|stepmom|\
    stepmum|stepfather|stepmother|parent|colleague|coworker|neighbour|neighbor|classmate|teacher";

/// The word suicide and its usual misspellings (`sucide`, `suicde`,
/// `suiside`, `suicidal`, `sucidal`, `suicidial`, …).
const SUI: &str = r"su[iy]?[cs]{1,2}[iy]?d(?:e|es|ed|al|ally|ality|ial)?";

/// Words between a subject and its verb that keep the subject
/// ("she had already tried…").
const GAP: &str = r"(?: (?:almost|nearly|once|already|just|then|finally|actually|also|even|had|has|have|recently|apparently|sadly|tragically|eventually|later|ve|s|d|been|was|first|twice))*";

/// Verbs of dying a capitalised name may precede ("Tom died", "Tom's").
const NAME_VERBS: &str = "committed|attempted|completed|died|took|overdosed|was|had|has|is|tried|\
    contemplated|became|got|seemed|felt|feels|sounded|sounds|killed|hanged|hung|ended";

/// Capitalised words that start sentences rather than name people (the
/// speaker's own words first: "Ive attempted…" is not someone else).
const NOT_NAMES: &[&str] = &[
    "I",
    "Im",
    "Ive",
    "Id",
    "Ill",
    "Me",
    "My",
    "We",
    "You",
    "It",
    "That",
    "What",
    "He",
    "She",
    "They",
    "There",
    "Here",
    "Who",
    "This",
    "Let",
    "Where",
    "How",
    "When",
    "Then",
    "Honestly",
    "Sometimes",
    "Lately",
    "Today",
    "Tonight",
    "Yesterday",
    "And",
    "But",
    "So",
    "Now",
    "Last",
    "Since",
    "After",
    "Because",
    "Well",
    "Maybe",
    "Also",
    "Just",
    "Still",
    "Even",
    "Actually",
    "Recently",
    "Once",
    "Twice",
    "Finally",
    "Everything",
    "Almost",
    "Nearly",
    "Never",
    "Often",
    "Really",
    "Literally",
    "Basically",
    "Again",
    "Already",
    "Always",
    "Seriously",
    "Anyway",
    "Someone",
    "Somebody",
    "Nobody",
    "Everyone",
    "Everybody",
    "God",
];

/// The rules that mark a turn, by name (see the module documentation).
pub const RULES: [&str; 24] = [
    "self_harm_verb",
    "end_life",
    "end_it",
    "suicide",
    "self_harm",
    "overdose",
    "pills",
    "means",
    "wish_to_die",
    "wish_dead",
    "better_off",
    "not_live",
    "no_reason",
    "tired_of_living",
    "dont_care",
    "death_thoughts",
    "death_wish",
    "burden",
    "goodbye",
    "not_here_long",
    "giving_away",
    "affairs",
    "reunion",
    "do_the_same",
];

struct Exclusion {
    pattern: Regex,
    /// Keep the span when it has the speaker as a subject (`i`, `im`, …).
    unless_first_person: bool,
}

struct Patterns {
    names: Regex,
    possessive_names: Regex,
    folds: Vec<(Regex, &'static str)>,
    exclusions: Vec<Exclusion>,
    rules: Vec<(&'static str, Regex)>,
    /// "Doing the same", marked when `death` also matches the turn.
    same: Regex,
    death: Regex,
}

fn re(pattern: &str) -> Regex {
    let pattern = pattern
        .replace("{KIN}", KIN)
        .replace("{SUI}", SUI)
        .replace("{GAP}", GAP);
    // The patterns are constants, checked by the tests: a typo fails them all.
    Regex::new(&pattern).unwrap_or_else(|e| panic!("safety pattern {pattern:?}: {e}"))
}

static PATTERNS: LazyLock<Patterns> = LazyLock::new(|| {
    let third = r"(?:he|she|they|hes|shes|theyre|who|someone|somebody|(?:my|our|his|her|their|a|the|your) (?:best |little |big |older |younger |baby |late |twin |only |eldest |youngest |dear )?(?:{KIN})s?)";
    let exclusion = |pattern: String, unless_first_person: bool| Exclusion {
        pattern: re(&pattern),
        unless_first_person,
    };
    Patterns {
        names: Regex::new(&format!(r"\b([A-Z][a-z]+) ({NAME_VERBS})\b"))
            .unwrap_or_else(|e| panic!("names: {e}")),
        possessive_names: Regex::new(r"\b([A-Z][a-z]+)['’]s\b")
            .unwrap_or_else(|e| panic!("possessive names: {e}")),
        folds: vec![
            (re(r"\b(?:my self|meself|myslef|mysef|mself|my own self|myselfe)\b"), "myself"),
            (re(r"\b(?:wanna|wana|wan na)\b"), "want to"),
            (re(r"\b(?:gonna|gunna|gon na)\b"), "going to"),
            (re(r"\b2\b"), "to"),
            (re(r"\bkms\b"), "kill myself"),
            (re(r"\bkil\b"), "kill"),
            (re(r"\b(?:cannot|can not)\b"), "cant"),
            (re(r"\bdo not\b"), "dont"),
            (re(r"\bdid not\b"), "didnt"),
            (re(r"\bwill not\b"), "wont"),
            (re(r"\bis not\b"), "isnt"),
            (re(r"\bi am\b"), "im"),
            (re(r"\bi have\b"), "ive"),
            (re(r"\bi (?:would|had)\b"), "id"),
            (re(r"\bany more\b"), "anymore"),
            (re(r"\b(?:sewer ?slide|sui side)\b"), "suicide"),
            (re(r"\bself (?:delete|deleting|deleted)\b|\bdelete myself\b"), "kill myself"),
        ],
        exclusions: vec![
            // Someone else's suicide or overdose, told as a loss.
            exclusion(
                r"\b(?:death|dead|lost|loss|losing|lose|bereaved|bereavement|passing|grieving|widowed|orphaned|mourning)(?: \w+){0,3} (?:by|of|from|to|through|after|in) (?:a |an |his |her |their |the )?(?:{SUI}|overdose|self harm)\b".to_owned(),
                true,
            ),
            exclusion(r"\bdied (?:by|through) (?:{SUI})\b".to_owned(), false),
            exclusion(
                r"\b(?:his|her|their|someones|(?:{KIN})s) (?:own |recent |sudden |attempted |first |last )?(?:{SUI}|overdose|od)(?: attempt| attempts)?\b".to_owned(),
                false,
            ),
            exclusion(
                r"\b(?:{SUI}|overdose) of (?:my|our|his|her|their|a|someone)\b".to_owned(),
                false,
            ),
            exclusion(
                format!(r"\b{third}{{GAP}} (?:committed|commited|attempted|completed|tried|contemplated|died of|died from) (?:a |an )?(?:{{SUI}})\b"),
                false,
            ),
            exclusion(
                format!(r"\b{third}{{GAP}} (?:took|taken|had|died of|died from|died after|passed from|passed after) (?:an |a |another |accidental |an accidental )?overdose\b"),
                false,
            ),
            exclusion(format!(r"\b{third}{{GAP}} overdos(?:ed|es|ing)\b"), false),
            exclusion(
                format!(r"\b{third}{{GAP}} (?:is|was|were|are|been|became|got|seemed|felt|feels|sounded|sounds|being) (?:so |very |really |quite |deeply |severely |actively |also )?(?:{{SUI}})\b"),
                false,
            ),
            exclusion(
                format!(r"\b{third}{{GAP}} (?:is |was |were |are |been |started |starting )?self (?:harms|harmed|harming)\b"),
                false,
            ),
            // Idioms.
            exclusion(
                r"\b(?:career|social|political|financial|commercial|professional|electoral) (?:{SUI})\b|\b(?:{SUI}) (?:squad|mission|missions|doors|bomber|bombers|bombing|bombings|loss|losses|bereavement)\b".to_owned(),
                false,
            ),
            exclusion(r"\b(?:kill|killed|killing) myself (?:laughing|with laughter)\b".to_owned(), false),
            exclusion(r"\b(?:die|died|dying) (?:of |from |with )?(?:embarrassment|laughter|laughing|boredom)\b".to_owned(), false),
            exclusion(r"\b(?:cut|cutting|cuts) myself off\b".to_owned(), false),
            exclusion(r"\b(?:burn|burning|burned|burnt|burns) myself out\b".to_owned(), false),
            exclusion(r"\bshot myself in the foot\b".to_owned(), false),
            exclusion(
                r"\b(?:hurt|cut|burnt|burned|burn|injured|hurting|cutting) myself (?:shaving|cooking|gardening|lifting|falling|playing|running|exercising|at the gym|at work|on (?:a|the) (?:stove|oven|knife|glass|door|table|bike|stairs|fence)|in the (?:garden|kitchen|gym))\b".to_owned(),
                false,
            ),
            exclusion(r"\bend (?:it|things) (?:with|between)\b".to_owned(), false),
            exclusion(
                r"\b(?:take|taking|took) (?:back )?my (?:own )?life (?:back|savings|in my (?:own )?hands|into my own hands|one day at a time|step by step)\b".to_owned(),
                false,
            ),
            exclusion(r"\b(?:live|living) (?:in|at|near|with|alone|abroad|here|there|on|by|next to|close to)\b".to_owned(), false),
            exclusion(
                r"\brather die than (?:go|do|sing|eat|wear|watch|be seen|admit|ask|miss|work|sit|have|dance|speak|talk|give|move)\b".to_owned(),
                false,
            ),
            exclusion(
                r"\bcutting (?:back|down|out|off|corners|ties|up|it close|the|my hair|hair|grass|wood|onions|vegetables|veg|bread|paper|costs)\b".to_owned(),
                false,
            ),
        ],
        rules: vec![
            ("self_harm_verb", re(r"\b(?:kill|killing|killed|hurt|hurting|harm|harming|harmed|cut|cutting|burn|burning|burned|burnt|off|offing|offed|top|topping|topped|hang|hanging|hanged|hung|drown|drowning|drowned|shoot|shooting|shot|poison|poisoning|poisoned|starve|starving|starved|unalive|unaliving|unalived|stab|stabbing|strangle|strangling|suffocate|suffocating|smother|gas|gassing|electrocute|end|ending) myself\b|\b(?:want|wanted|going|ready|tempted|about|plan|planning|thinking about|think about|thought about) (?:to )?unaliv\w*\b")),
            ("end_life", re(r"\b(?:end|ending|ended|take|taking|took|finish|finishing) (?:my|my own) life\b")),
            ("end_it", re(r"\bend(?:ing)? (?:it all|everything|my suffering|my existence)\b|\b(?:want|wanted|going|ready|decided|plan|planning|tempted|about|need|have) to end (?:it|things)\b|\b(?:think|thinking|thought|considering|considered) (?:about |of )?ending (?:it|things|everything)\b")),
            ("suicide", re(r"\b(?:{SUI})\b")),
            ("self_harm", re(r"\bself (?:harm|harming|harmed|harms|injury|injuring|injure|injured|mutilation|mutilate|mutilating)\b|\bselfharm\w*|\b(?:started|start|been|keep|kept|back to|relapsed|relapsing|urge to|urges to|want to|craving|go back to|went back to) (?:cutting|self harming)\b|\bcutting again\b")),
            ("overdose", re(r"\boverdos(?:e|ed|es|ing)\b|\b(?:going to|want to|might|could|tempted to|thinking about|think about|tried to|try to|about to|plan to|planning to) (?:od|o d)\b")),
            ("pills", re(r"\b(?:took|take|taking|swallowed|swallow|swallowing|downed|down) (?:a whole|the whole|an entire|a full|a|all the|all of the|all of my) (?:bottle|box|packet|pack|handful|load|bunch|lot) of (?:my |the )?(?:pills|tablets|meds|medication|medicine|sleeping pills|painkillers|paracetamol|tylenol|aspirin|ibuprofen|insulin)\b|\b(?:took|take|taking|swallowed|swallow) (?:too many|loads of|handfuls of|way too many) (?:of )?(?:my |the )?(?:pills|tablets|meds|medication|painkillers|sleeping pills)\b|\b(?:stockpiling|stockpiled|stockpile|saving up|hoarding|hoarded|collecting|saving) (?:my |the |some |up )*(?:pills|tablets|meds|medication|sleeping pills|painkillers)\b")),
            ("means", re(r"\b(?:jump|jumping|jumped|throw myself|throwing myself|threw myself|hurl myself) (?:off|from|in front of|under|into) (?:a |the |this |that |my )?(?:bridge|building|roof|rooftop|cliff|balcony|train|bus|traffic|car|truck|lorry|tracks|window|ledge|overpass|motorway|highway|river|sea|tower)\b|\b(?:step|stepping|stepped|walk|walking|walked) (?:in front of|onto) (?:a |the )?(?:train|bus|traffic|truck|lorry|tracks|railway)\b|\b(?:lie|lying|lay) (?:down )?on (?:the )?(?:tracks|railway|railway line|train tracks)\b|\b(?:drive|driving|drove|crash|crashing|swerve|swerving) (?:my car |the car )?(?:into|off) (?:a |the )?(?:tree|wall|bridge|cliff|oncoming traffic|traffic|river|lake|pole|truck|lorry)\b|\b(?:walk|walking|walked) into the (?:sea|ocean|river|lake|water)\b|\b(?:gun|pistol|rifle|knife|blade) (?:to|in|against|into) my (?:head|mouth|temple|wrist|wrists|chest|throat)\b|\b(?:slit|slitting|cut|cutting|slash|slashing) my (?:wrist|wrists|throat)\b|\b(?:tie|tied|tying|made|make|making|bought|buy|buying|got|have|get) (?:a |the )?noose\b|\b(?:rope|noose) (?:around|round) my neck\b")),
            ("wish_to_die", re(r"\b(?:want|wanted|wanting|wish|wished|wishing|ready|going|plan|planning|hope|hoping|pray|praying|long|longing|deserve|need|like) (?:to |i could |i would |i could just |i would just |that i could |that i would |i can |i could )?(?:just |simply )?(?:die|be dead|not be alive|not exist|stop existing|cease to exist|not wake up|never wake up|sleep forever|go to sleep forever|disappear forever|stop living|not be here anymore|not be around anymore|not be here)\b|\b(?:pray|praying|prayed|beg|begging|begged|ask|asking|asked|waiting for|ready for|want|wish|wishing|hope|hoping)(?: \w+){0,3} (?:for )?(?:god|the lord|jesus|death|the universe) (?:would |will |to |could |might |d |should )?(?:just )?(?:take|takes|took|kill|kills|end|ends|come for|comes for|call|calls) me\b|\bready to meet my maker\b|\b(?:hope|hoping|pray|praying|wish) (?:that )?(?:i|id) (?:die|dont wake up|never wake up|wont wake up|die in my sleep)\b|\b(?:go to sleep|fall asleep|sleep) and (?:never|not) wake up\b")),
            ("wish_dead", re(r"\bwish(?:ed|ing)? (?:that )?(?:i|id)(?: (?:was|were|had|could|would|just|also|have|been|be|simply|already|really|only|all|too|d))* (?:dead|died|die|gone|never been born|never born|not born|not alive|not here anymore|never woken up|never woke up|not woken up)\b")),
            ("better_off", re(r"\b(?:rather|better off|better) (?:be )?(?:dead|die|gone)\b|\bbetter (?:off )?without me\b")),
            ("not_live", re(r"\b(?:dont|didnt|no longer|not|never|doesnt|dont even) (?:want|wanted|wish|feel like|like|see the point in|see the point of|see a reason to|see any reason to|have a reason to) (?:to )?(?:be alive|live|living|exist|existing|wake up|waking up|go on living|keep living|carry on living|be here anymore|be here any longer|be around anymore|go on anymore|keep going anymore|carry on anymore|go on without|carry on without|be in this world|be on this earth)\b")),
            ("no_reason", re(r"\b(?:no|nothing|not any|no more|no real|not much) (?:reason|reasons|point|purpose)(?: left)? (?:to|in|for) (?:live|living|go on|going on|keep going|keep living|being alive|be alive|being here|be here|carry on|carrying on|life|staying alive|stay alive)\b|\bnothing (?:left )?to live for\b|\b(?:whats|what is|what s) the point (?:of|in) (?:living|life|going on|being alive|being here|anything anymore|carrying on|existing|it all)\b|\b(?:life|living|it) (?:isnt|is not|aint|not|no longer|wasnt) worth (?:living|it anymore|living anymore)\b|\bnot worth living\b|\bno (?:will|desire|wish) to live\b|\blost the will to live\b|\b(?:cant|couldnt) (?:go on|keep going|carry on) (?:anymore|any longer|living)\b|\bcant (?:keep|go on|carry on) living\b|\bcant live (?:like this|this way) anymore\b")),
            ("tired_of_living", re(r"\b(?:tired|sick|done|exhausted|weary|finished|fed up) (?:of|with) (?:living|being alive|life|existing|this life|breathing|waking up)\b|\bdone (?:living|with life|with this life|with living)\b")),
            ("dont_care", re(r"\b(?:dont|wouldnt) (?:care|mind) (?:if|whether) i (?:live|die|died|wake up|woke up|make it|survive|dont wake up|never wake up|get hit|got hit|crashed|crash)\b")),
            ("death_thoughts", re(r"\b(?:think|thinking|thought|thoughts|dream|dreaming|fantasi[sz]e|fantasi[sz]ing|obsessing) (?:about|of) (?:dying|my death|my own death|being dead|not being here|not being alive|not waking up|ending it|ending things|ending my life|not existing|disappearing forever|killing myself)\b")),
            ("death_wish", re(r"\b(?:have|had|got) (?:a |this )?(?:passive )?death wish\b|\bpassive (?:death wish|{SUI})\b")),
            ("burden", re(r"\b(?:wont|not going to|wont have to|soon wont|wont need to) be (?:a|your|their|anyones|everyones|the) burden (?:much |for much |any |for )?(?:longer|more)\b|\bburden (?:for )?much longer\b")),
            ("goodbye", re(r"\b(?:wrote|written|writing|write|left|leave|leaving|drafted|drafting) (?:a |my |some |the )?(?:goodbye|farewell|final) (?:note|notes|letter|letters|message|messages)\b|\bsaying (?:my )?(?:final|last) goodbyes?\b|\bthis is my (?:last|final) goodbye\b")),
            ("not_here_long", re(r"\b(?:wont|not going to|might not|may not) be (?:here|around) (?:much longer|for much longer|for long|long|anymore|any longer|by (?:tomorrow|morning|the morning|next week|the weekend|christmas))\b|\b(?:wont|not going to) be alive\b")),
            ("giving_away", re(r"\b(?:give|giving|given|gave|handed|handing) (?:away )?(?:all |most )?(?:of )?my (?:things|stuff|belongings|possessions|prized possessions|treasures|valuables|pets)(?: away)?\b")),
            ("affairs", re(r"\b(?:put|putting|get|getting|got|have|had|set|setting) (?:all )?(?:of )?my affairs in order\b")),
            ("reunion", re(r"\b(?:want|wanted|need|needing|long|longing|ready|going|cant wait|wish i could|hope|hoping|plan|planning|pray|praying|try|trying|yearning|yearn|desperate|aching|ache)(?: to)? (?:be with|join|go to|go and be with|go be with|be reunited with|reunite with|follow) (?:him|her|them|my (?:{KIN})) (?:again|soon|now|there|in heaven|up there|on the other side|wherever (?:he|she|they) (?:is|are)|where (?:he|she|they) (?:is|are|went)|forever|for good)\b|\b(?:ill|i will|i shall|going to|im going to|soon ill|ill soon|cant wait to) be with (?:him|her|them|my (?:{KIN})) (?:soon|again soon|shortly|before long|very soon)\b|\b(?:want|wanted|need|going|ready|long|longing|planning)(?: to)? (?:join|follow) (?:him|her|them|my (?:{KIN}))$|\b(?:want|wanted|need|going|ready|long|longing|wish i could)(?: to)? go (?:to )?where (?:he|she|they) (?:is|are|went|has gone|have gone)\b")),
        ],
        same: re(r"\b(?:think|thinking|thought|considered|considering|consider|want|wanted|tempted|going|might|could|will|plan|planning|urge|urges|tempting) (?:about |of |to )?(?:doing|do) (?:the same|what (?:he|she|they) did|it too|it as well|that too|that myself|it myself|the same thing)\b"),
        death: re(r"\b(?:{SUI}|killed (?:him|her|them)sel(?:f|ves)|took (?:his|her|their) (?:own )?life|overdos\w*|hanged (?:him|her|them)sel(?:f|ves)|hung (?:him|her|them)sel(?:f|ves)|ended (?:his|her|their) (?:own )?life|died|dead|death|passed)\b"),
    }
});

/// The speaker as a subject.
fn has_first_person(span: &str) -> bool {
    span.split(' ')
        .any(|w| matches!(w, "i" | "im" | "ive" | "id" | "ill" | "myself"))
}

/// Step 1: names as `someone`, lowercased words, clauses.
fn clauses(text: &str) -> Vec<String> {
    let p = &*PATTERNS;
    let named = p.names.replace_all(text, |c: &Captures| {
        if NOT_NAMES.contains(&&c[1]) {
            c[0].to_owned()
        } else {
            format!("someone {}", &c[2])
        }
    });
    let named = p.possessive_names.replace_all(&named, |c: &Captures| {
        if NOT_NAMES.contains(&&c[1]) {
            c[0].to_owned()
        } else {
            "someones".to_owned()
        }
    });
    let mut out = Vec::new();
    for clause in named.split(['.', '!', '?', ';', ':', '\n']) {
        let mut words = String::with_capacity(clause.len());
        for c in clause.chars() {
            match c {
                '\'' | '’' | '‘' | '`' => {}
                c if c.is_alphanumeric() => words.extend(c.to_lowercase()),
                _ => words.push(' '),
            }
        }
        let mut clause = words.split_whitespace().collect::<Vec<_>>().join(" ");
        for (pattern, with) in &p.folds {
            clause = pattern.replace_all(&clause, *with).into_owned();
        }
        if !clause.is_empty() {
            out.push(clause);
        }
    }
    out
}

/// Step 2: blanks what is not the speaker's own risk.
fn set_aside(clause: &str) -> String {
    let mut clause = clause.to_owned();
    for exclusion in &PATTERNS.exclusions {
        clause = exclusion
            .pattern
            .replace_all(&clause, |c: &Captures| {
                if exclusion.unless_first_person && has_first_person(&c[0]) {
                    c[0].to_owned()
                } else {
                    "_".to_owned()
                }
            })
            .into_owned();
    }
    clause
}

/// The rule that marks `text` as a crisis turn (the speaker speaks of ending
/// their life or harming themselves), or `None` for an ordinary turn. The
/// rule name is for tests and documentation; it is never logged.
#[must_use]
pub fn crisis_rule(text: &str) -> Option<&'static str> {
    let p = &*PATTERNS;
    let clauses = clauses(text);
    for clause in &clauses {
        let kept = set_aside(clause);
        if let Some((name, _)) = p.rules.iter().find(|(_, rule)| rule.is_match(&kept)) {
            return Some(name);
        }
    }
    let spoke_of_death = clauses.iter().any(|c| p.death.is_match(c));
    (spoke_of_death && clauses.iter().any(|c| p.same.is_match(&set_aside(c))))
        .then_some("do_the_same")
}

/// Whether `text` is a crisis turn (see [`crisis_rule`]).
#[must_use]
pub fn is_crisis(text: &str) -> bool {
    crisis_rule(text).is_some()
}
