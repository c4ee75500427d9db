//! The eval's figures, as tables or as one JSON object.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::Recalled;
use super::set::Sizes;

/// Recall@3 (profile counted) the eval must reach.
pub const TARGET_RECALL: f64 = 0.90;
/// The share of negatives allowed to recall anything.
pub const TARGET_FALSE_RECALL: f64 = 0.10;

/// One floor of the sweep, at the eval's k.
#[derive(Debug, Clone)]
pub struct SweepRow {
    pub threshold: f32,
    pub recall_memory: f64,
    pub recall_with_profile: f64,
    pub false_recall: f64,
}

/// A memory label not recalled, or a negative that recalled something.
#[derive(Debug, Clone)]
pub struct Miss {
    utterance: String,
    /// The missed label and its raw score, when a positive.
    missed: Option<(String, Option<f32>)>,
    /// What came back instead.
    got: Vec<(String, f32)>,
}

fn named(found: &Recalled) -> Vec<(String, f32)> {
    found
        .iter()
        .map(|(id, s)| (id.clone().unwrap_or_else(|| "<another owner>".into()), *s))
        .collect()
}

impl Miss {
    pub fn missed(utterance: &str, label: &str, score: Option<f32>, got: &Recalled) -> Self {
        Self {
            utterance: utterance.to_owned(),
            missed: Some((label.to_owned(), score)),
            got: named(got),
        }
    }

    pub fn false_recall(utterance: &str, got: &Recalled) -> Self {
        Self {
            utterance: utterance.to_owned(),
            missed: None,
            got: named(got),
        }
    }
}

/// Everything `rose memory eval` prints.
#[derive(Debug, Clone)]
pub struct Report {
    pub source: String,
    pub sizes: Sizes,
    pub k: usize,
    /// `MIN_RECALL_SCORE`.
    pub threshold: f32,
    /// `(k, memory labels only, profile counted)`.
    pub recall_at: Vec<(usize, f64, f64)>,
    /// Negatives that recalled anything at `k`.
    pub false_recalls: usize,
    /// Memories recalled that were another owner's (must be none).
    pub foreign: usize,
    /// The share of memories recalled at `k` for positives that were not
    /// among the labels.
    pub unlabelled: f64,
    pub sweep: Vec<SweepRow>,
    pub misses: Vec<Miss>,
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Report {
    /// Recall with profile counted at `k`.
    fn headline(&self) -> f64 {
        self.recall_at
            .iter()
            .find(|(k, _, _)| *k == self.k)
            .map_or(0.0, |r| r.2)
    }

    fn false_recall(&self) -> f64 {
        super::ratio(self.false_recalls + self.foreign, self.sizes.negatives)
    }

    fn met(&self) -> (bool, bool) {
        (
            self.headline() >= TARGET_RECALL,
            self.false_recall() <= TARGET_FALSE_RECALL && self.foreign == 0,
        )
    }

    /// The figures as one JSON object.
    pub fn json(&self, misses: bool) -> Value {
        let s = self.sizes;
        let by_k = |pick: fn(&(usize, f64, f64)) -> f64| -> Value {
            self.recall_at
                .iter()
                .map(|r| (r.0.to_string(), json!(r3(pick(r)))))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let (recall_met, false_met) = self.met();
        let mut out = json!({
            "set": {
                "source": self.source,
                "people": s.people,
                "facts": s.profile_facts + s.memory_facts,
                "profile_facts": s.profile_facts,
                "memory_facts": s.memory_facts,
                "utterances": s.utterances,
                "negatives": s.negatives,
            },
            "k": self.k,
            "threshold": r3(f64::from(self.threshold)),
            "recall": { "memory": by_k(|r| r.1), "with_profile": by_k(|r| r.2) },
            "false_recall": {
                "rate": r3(self.false_recall()),
                "count": self.false_recalls,
                "negatives": s.negatives,
            },
            "foreign_recalls": self.foreign,
            "unlabelled_share": r3(self.unlabelled),
            "sweep": self.sweep.iter().map(|row| json!({
                "threshold": r3(f64::from(row.threshold)),
                "recall_memory": r3(row.recall_memory),
                "recall_with_profile": r3(row.recall_with_profile),
                "false_recall": r3(row.false_recall),
            })).collect::<Vec<_>>(),
            "targets": {
                "recall": TARGET_RECALL,
                "false_recall": TARGET_FALSE_RECALL,
                "recall_met": recall_met,
                "false_recall_met": false_met,
            },
        });
        if misses {
            out["misses"] = self
                .misses
                .iter()
                .map(|m| {
                    json!({
                        "utterance": m.utterance,
                        "missed": m.missed.as_ref().map(|(id, _)| id),
                        "missed_score": m.missed.as_ref().and_then(|(_, s)| *s),
                        "got": m.got.iter().map(|(id, s)| json!({"fact": id, "score": s})).collect::<Vec<_>>(),
                    })
                })
                .collect();
        }
        out
    }

    /// The figures as tables.
    pub fn text(&self, misses: bool) -> String {
        let s = self.sizes;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Memory recall on {}: {} people, {} facts ({} profile, {} memories), \
             {} utterances, {} with nothing to recall",
            self.source,
            s.people,
            s.profile_facts + s.memory_facts,
            s.profile_facts,
            s.memory_facts,
            s.utterances,
            s.negatives
        );
        let _ = writeln!(
            out,
            "floor {:.2} (MIN_RECALL_SCORE), re-ranked by recency\n",
            self.threshold
        );
        let _ = writeln!(out, "           memories only   profile counted");
        for (k, memory, profile) in &self.recall_at {
            let _ = writeln!(out, "recall@{k:<3} {memory:>13.3}   {profile:>15.3}");
        }
        let _ = writeln!(
            out,
            "\nfalse recall at k={}: {}/{} negatives recalled something ({:.1} %)",
            self.k,
            self.false_recalls,
            s.negatives,
            self.false_recall() * 100.0
        );
        let _ = writeln!(out, "memories of another owner recalled: {}", self.foreign);
        let _ = writeln!(
            out,
            "recalled for positives but not labelled: {:.1} %",
            self.unlabelled * 100.0
        );
        let (recall_met, false_met) = self.met();
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        let _ = writeln!(
            out,
            "targets: recall@{} (profile counted) >= {TARGET_RECALL:.2}: {}; false recall <= {:.0} %: {}",
            self.k,
            verdict(recall_met),
            TARGET_FALSE_RECALL * 100.0,
            verdict(false_met)
        );
        let _ = writeln!(out, "\nthreshold sweep (k = {})", self.k);
        let _ = writeln!(
            out,
            "floor   recall (memories)   recall (profile counted)   false recall"
        );
        for row in &self.sweep {
            let mark = if (row.threshold - self.threshold).abs() < 1e-4 {
                " *"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "{:.2} {:>19.3} {:>26.3} {:>13.1} %{mark}",
                row.threshold,
                row.recall_memory,
                row.recall_with_profile,
                row.false_recall * 100.0
            );
        }
        if misses {
            let _ = writeln!(out, "\nmisses at k = {}", self.k);
            for m in &self.misses {
                let got: Vec<String> = m.got.iter().map(|(id, s)| format!("{id} {s:.2}")).collect();
                match &m.missed {
                    Some((label, score)) => {
                        let score = score.map_or_else(|| "-".to_owned(), |s| format!("{s:.2}"));
                        let _ = writeln!(
                            out,
                            "missed {label} ({score}) for {:?}; got [{}]",
                            m.utterance,
                            got.join(", ")
                        );
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "false  {:?} recalled [{}]",
                            m.utterance,
                            got.join(", ")
                        );
                    }
                }
            }
        }
        out
    }
}
