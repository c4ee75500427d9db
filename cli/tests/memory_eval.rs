//! `rose memory eval` on the shipped set: a quality regression check on fixed
//! data (recall@3 with profile lines counted, false recall), not a timing.

use std::process::Command;

use serde_json::Value;

const ROSE: &str = env!("CARGO_BIN_EXE_rose");

#[test]
fn recall_on_the_shipped_set_meets_its_targets() {
    let model = rose_tests::model_dir();
    if !model.join("model.safetensors").exists() {
        let why = format!("no embedding model in {}", model.display());
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must run the memory eval: {why} (set EMBEDDING_MODEL_DIR)"
        );
        eprintln!("skipped: {why}");
        return;
    }
    let out = Command::new(ROSE)
        .args(["memory", "eval", "--json"])
        .env("EMBEDDING_MODEL_DIR", &model)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .output()
        .expect("run rose memory eval");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).expect("one JSON object on stdout");

    // The figures are of the whole shipped set.
    let set = &report["set"];
    assert_eq!(set["people"], 12, "{set}");
    assert_eq!(set["memory_facts"], 84, "{set}");
    assert_eq!(set["profile_facts"], 47, "{set}");
    assert_eq!(set["utterances"], 156, "{set}");
    assert_eq!(set["negatives"], 60, "{set}");
    assert_eq!(report["k"], 3);

    let recall = report["recall"]["with_profile"]["3"]
        .as_f64()
        .expect("recall@3");
    let false_recall = report["false_recall"]["rate"].as_f64().expect("rate");
    assert!(recall >= 0.90, "recall@3 (profile counted) {recall} < 0.90");
    assert!(false_recall <= 0.10, "false recall {false_recall} > 0.10");
    assert_eq!(
        report["foreign_recalls"], 0,
        "a person got another's memory"
    );
    let memory_only = report["recall"]["memory"]["3"].as_f64().expect("memory");
    assert!(memory_only <= recall, "profile lines only add recalls");
    let sweep = report["sweep"].as_array().expect("sweep");
    assert!(sweep.len() >= 9, "{sweep:?}");
}
