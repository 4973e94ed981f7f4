//! The intent head of the test encoder package on CLINC150 test (never seen at import: training
//! uses half of train, calibration uses dev), and the importer's refusals of bad label files.

use seam_edge::Error;
use seam_edge::import::encoder::{EncoderImportOptions, import_encoder};
use seam_edge::perception::dataset::read_examples;
use seam_edge::perception::evaluate::evaluate;
use seam_edge::perception::{Perception, PerceptionLimits};
use seam_edge::test_util::{clinc150, encoder_package_dir, minilm_dir, workspace_root};
use std::path::PathBuf;

#[test]
fn clinc150_test_accuracy_and_out_of_scope_threshold() {
    let mut p = Perception::load(&encoder_package_dir(), 2, PerceptionLimits::default()).unwrap();
    assert_eq!(p.labels().len(), 150);
    let rows = read_examples(&clinc150("test")).unwrap();
    let e = evaluate(&mut p, &rows).unwrap();
    eprintln!("CLINC150 test: {e:?}");
    assert_eq!(e.in_scope, rows.len());
    assert_eq!(e.unknown_labels, 0);
    // A broken encoder or head lands far below this (chance is 1/150).
    assert!(e.accuracy >= 0.90, "accuracy {}", e.accuracy);
    // The threshold was calibrated on dev for 5% false rejections; test is the same
    // distribution.
    assert!(
        e.false_rejection <= 0.10,
        "false rejection {}",
        e.false_rejection
    );

    let c = p
        .classify("how much money is in my checking account", 3)
        .unwrap();
    assert_eq!(
        (c.intent.as_str(), c.domain.as_str()),
        ("balance", "banking"),
        "{c:?}"
    );
    assert_eq!(c.top.len(), 3);
    assert!(c.top.windows(2).all(|w| w[0].score >= w[1].score));
    let c = p
        .classify("what is the weather like in paris tomorrow", 0)
        .unwrap();
    assert_eq!(
        (c.intent.as_str(), c.domain.as_str()),
        ("weather", "utility"),
        "{c:?}"
    );
    assert_eq!(c.top.len(), 5);
}

fn scratch(name: &str, content: &str) -> PathBuf {
    let dir = workspace_root()
        .join("target")
        .join(format!("seam-test-labels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn import_with(train: PathBuf, dev: PathBuf) -> Error {
    let out = workspace_root()
        .join("target")
        .join(format!("seam-test-bad-import-{}", std::process::id()));
    let err = import_encoder(&EncoderImportOptions::new(
        minilm_dir(),
        out.clone(),
        train,
        dev,
    ))
    .expect_err("the import must fail");
    assert!(
        !out.join("manifest.toml").exists(),
        "no package may be written"
    );
    err
}

#[test]
fn label_files_with_unknown_or_missing_labels_are_refused() {
    let train = scratch(
        "train.tsv",
        "text\tlabel\nwhat is my balance\tbalance\nsend money\ttransfer\n",
    );
    let dev_unknown = scratch(
        "dev-unknown.tsv",
        "text\tlabel\nhow much do i have\tbalance\nbook a spaceship\tspace_travel\n",
    );
    let err = import_with(train.clone(), dev_unknown).to_string();
    assert!(
        err.contains("never occur in the training data") && err.contains("`space_travel`"),
        "{err}"
    );

    let no_domain = scratch(
        "train-nodomain.tsv",
        "what is my balance\tbalance\nwarp speed\tspace_travel\n",
    );
    let err = import_with(no_domain, train.clone()).to_string();
    assert!(
        err.contains("no domain") && err.contains("`space_travel`"),
        "{err}"
    );

    let missing = scratch(
        "train-missing.tsv",
        "text\tlabel\nwhat is my balance\tbalance\nsend money\n",
    );
    let err = import_with(missing, train.clone());
    assert!(matches!(err, Error::Dataset(_)), "{err:?}");
    assert!(err.to_string().contains("line 3"), "{err}");

    let empty_label = scratch("train-empty.tsv", "what is my balance\t\n");
    let err = import_with(empty_label, train.clone()).to_string();
    assert!(err.contains("label is missing"), "{err}");

    let err = import_with(workspace_root().join("no/such/train.tsv"), train).to_string();
    assert!(err.contains("no/such/train.tsv"), "{err}");
}
