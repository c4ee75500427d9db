//! The memory evaluation set: people, the facts they shared, and later
//! utterances labelled with the facts that should come back.
//!
//! JSON: `{"people": [{"id", "facts": [{"id", "kind": "profile"|"memory",
//! "text"}], "utterances": [{"text", "expect": [fact id…]}], "negatives":
//! [text…]}]}`. A profile fact is a line always in the prompt; a memory fact
//! has to come back through recall. Labels name facts of the same person.

use std::collections::HashSet;

use anyhow::{Context as _, bail};
use serde_json::Value;

/// The set shipped with Rose (`cli/eval/memory.json`).
pub const SHIPPED: &str = include_str!("../../eval/memory.json");

/// How a fact reaches the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A profile line: always in the prompt.
    Profile,
    /// An episodic memory: only what recall brings back.
    Memory,
}

/// Something a person shared.
#[derive(Debug, Clone)]
pub struct Fact {
    pub id: String,
    pub kind: Kind,
    pub text: String,
}

/// A later utterance and the facts that bear on it.
#[derive(Debug, Clone)]
pub struct Utterance {
    pub text: String,
    pub expect: Vec<String>,
}

/// One person: their own memory owner.
#[derive(Debug, Clone)]
pub struct Person {
    pub id: String,
    pub facts: Vec<Fact>,
    pub utterances: Vec<Utterance>,
    /// Utterances with nothing to recall.
    pub negatives: Vec<String>,
}

impl Person {
    /// The fact with this id.
    #[must_use]
    pub fn fact(&self, id: &str) -> Option<&Fact> {
        self.facts.iter().find(|f| f.id == id)
    }
}

/// A parsed, checked evaluation set.
#[derive(Debug, Clone)]
pub struct EvalSet {
    pub people: Vec<Person>,
}

/// The set's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub people: usize,
    pub profile_facts: usize,
    pub memory_facts: usize,
    pub utterances: usize,
    pub negatives: usize,
}

fn text<'a>(value: &'a Value, key: &str, at: &str) -> anyhow::Result<&'a str> {
    match value.get(key).and_then(Value::as_str).map(str::trim) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => bail!("{at}: \"{key}\" must be a non-empty string"),
    }
}

fn array<'a>(value: &'a Value, key: &str, at: &str) -> anyhow::Result<&'a [Value]> {
    value
        .get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .with_context(|| format!("{at}: \"{key}\" must be an array"))
}

fn fact(value: &Value, at: &str) -> anyhow::Result<Fact> {
    let id = text(value, "id", at)?.to_owned();
    let at = format!("{at} ({id})");
    let kind = match text(value, "kind", &at)? {
        "profile" => Kind::Profile,
        "memory" => Kind::Memory,
        other => bail!("{at}: kind must be \"profile\" or \"memory\", not {other:?}"),
    };
    Ok(Fact {
        id,
        kind,
        text: text(value, "text", &at)?.to_owned(),
    })
}

fn person(value: &Value, index: usize, seen: &mut HashSet<String>) -> anyhow::Result<Person> {
    let id = text(value, "id", &format!("people[{index}]"))?.to_owned();
    let at = format!("person {id}");
    let facts = array(value, "facts", &at)?
        .iter()
        .enumerate()
        .map(|(i, f)| fact(f, &format!("{at}, facts[{i}]")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for f in &facts {
        if !seen.insert(f.id.clone()) {
            bail!("{at}: fact id {} is used twice", f.id);
        }
    }
    let mut utterances = Vec::new();
    for (i, u) in array(value, "utterances", &at)?.iter().enumerate() {
        let at = format!("{at}, utterances[{i}]");
        let expect = array(u, "expect", &at)?
            .iter()
            .map(|e| e.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .with_context(|| format!("{at}: \"expect\" must hold fact ids"))?;
        if expect.is_empty() {
            bail!("{at}: expects no fact (an utterance with nothing to recall is a negative)");
        }
        if let Some(unknown) = expect.iter().find(|e| !facts.iter().any(|f| &f.id == *e)) {
            bail!("{at}: {unknown} is not a fact of {id}");
        }
        utterances.push(Utterance {
            text: text(u, "text", &at)?.to_owned(),
            expect,
        });
    }
    let negatives = array(value, "negatives", &at)?
        .iter()
        .enumerate()
        .map(|(i, n)| match n.as_str().map(str::trim) {
            Some(s) if !s.is_empty() => Ok(s.to_owned()),
            _ => bail!("{at}, negatives[{i}]: must be a non-empty string"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Person {
        id,
        facts,
        utterances,
        negatives,
    })
}

impl EvalSet {
    /// Parses and checks a set: unique fact ids, labels naming facts of the
    /// same person, no unlabelled positive.
    ///
    /// # Errors
    /// Where the set is malformed, and how.
    pub fn parse(json: &str) -> anyhow::Result<Self> {
        let doc: Value = serde_json::from_str(json).context("not valid JSON")?;
        let mut seen = HashSet::new();
        let people = array(&doc, "people", "the set")?
            .iter()
            .enumerate()
            .map(|(i, p)| person(p, i, &mut seen))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if people.is_empty() {
            bail!("the set holds no people");
        }
        let mut ids = HashSet::new();
        if let Some(twice) = people.iter().find(|p| !ids.insert(p.id.as_str())) {
            bail!("person id {} is used twice", twice.id);
        }
        Ok(Self { people })
    }

    /// How big the set is.
    #[must_use]
    pub fn sizes(&self) -> Sizes {
        let facts = self.people.iter().flat_map(|p| &p.facts);
        let memory_facts = facts.clone().filter(|f| f.kind == Kind::Memory).count();
        Sizes {
            people: self.people.len(),
            profile_facts: facts.count() - memory_facts,
            memory_facts,
            utterances: self.people.iter().map(|p| p.utterances.len()).sum(),
            negatives: self.people.iter().map(|p| p.negatives.len()).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_set_is_well_formed_and_big_enough() {
        let set = EvalSet::parse(SHIPPED).expect("shipped set");
        let s = set.sizes();
        assert!(s.people >= 10, "{s:?}");
        assert!(s.profile_facts + s.memory_facts >= 60, "{s:?}");
        assert!(s.memory_facts >= 35, "{s:?}");
        assert!(s.utterances >= 150, "{s:?}");
        assert!(s.negatives >= 50, "{s:?}");
    }

    #[test]
    fn a_label_must_name_a_fact_of_the_same_person() {
        let json = r#"{"people": [
            {"id": "a", "facts": [{"id": "a.1", "kind": "memory", "text": "x"}],
             "utterances": [], "negatives": []},
            {"id": "b", "facts": [{"id": "b.1", "kind": "memory", "text": "y"}],
             "utterances": [{"text": "hi", "expect": ["a.1"]}], "negatives": []}]}"#;
        let error = EvalSet::parse(json)
            .expect_err("cross-person label")
            .to_string();
        assert!(error.contains("a.1 is not a fact of b"), "{error}");
    }

    #[test]
    fn fact_ids_are_unique_and_kinds_known() {
        let twice = r#"{"people": [{"id": "a", "facts": [
            {"id": "a.1", "kind": "memory", "text": "x"},
            {"id": "a.1", "kind": "profile", "text": "y"}],
            "utterances": [], "negatives": []}]}"#;
        assert!(EvalSet::parse(twice).is_err());
        let kind = r#"{"people": [{"id": "a", "facts": [
            {"id": "a.1", "kind": "episodic", "text": "x"}],
            "utterances": [], "negatives": []}]}"#;
        let error = EvalSet::parse(kind).expect_err("kind").to_string();
        assert!(error.contains("episodic"), "{error}");
    }
}
