//! `seam-router policy check|replay` as a user runs them, on the shipped example policy and on
//! broken files.

use seam_router::policy::replay::TraceRecord;
use seam_router::policy::{Features, ModelInfo, Policy, Route};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/policy.toml")
}

fn router(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seam-router"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn the_example_policy_checks_and_routes_as_its_comments_say() {
    let out = router(&["policy", "check", example().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("ok, version 1, 6 rules"), "{stdout}");
    assert!(stdout.contains("privacy"), "{stdout}");

    let p = Policy::from_file(&example()).unwrap();
    let model = ModelInfo {
        layers: 30,
        split_points: vec![4, 8, 15],
    };
    let mut f = Features::example();
    f.domain = "banking".into();
    f.out_of_scope = true;
    assert_eq!(p.evaluate(&f, &model).rule, "privacy");
    f.domain = "travel".into();
    let d = p.evaluate(&f, &model);
    assert_eq!(
        (d.rule.as_str(), d.route),
        ("uncertain", Route::Split { layer: 15 })
    );
    f.link_up = false;
    assert_eq!(p.evaluate(&f, &model).route, Route::Local);
}

#[test]
fn a_broken_policy_is_refused_with_the_rule_named() {
    let bad = scratch("bad.toml");
    std::fs::write(
        &bad,
        "version = 1\ndefault_split = 8\n[[rule]]\nname = \"typo\"\nwhen = \"confidnce < 0.5\"\naction = \"local\"\n",
    )
    .unwrap();
    let out = router(&["policy", "check", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("rule 1 (`typo`)") && stderr.contains("confidnce"),
        "{stderr}"
    );
    let out = router(&["policy", "check", "/nonexistent/policy.toml"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("/nonexistent/policy.toml"));
}

#[test]
fn replay_reports_routes_before_and_after() {
    // Recorded under a policy that ran everything locally.
    let old = Policy::parse("version = 1\ndefault_split = 8\n").unwrap();
    let model = ModelInfo {
        layers: 30,
        split_points: vec![4, 8, 15],
    };
    let mut trace = String::new();
    let mut oos = Features::example();
    oos.out_of_scope = true;
    let mut bank = Features::example();
    bank.domain = "banking".into();
    for f in [&oos, &bank, &oos] {
        let rec = TraceRecord {
            features: f.clone(),
            model: model.clone(),
            decision: old.evaluate(f, &model),
        };
        trace.push_str(&serde_json::to_string(&rec).unwrap());
        trace.push('\n');
    }
    let path = scratch("decisions.jsonl");
    std::fs::write(&path, trace).unwrap();
    let replay = || {
        router(&[
            "policy",
            "replay",
            example().to_str().unwrap(),
            "--trace",
            path.to_str().unwrap(),
        ])
    };
    let out = replay();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("replayed 3 requests"), "{stdout}");
    assert!(stdout.contains("changed decisions: 2 of 3"), "{stdout}");
    assert!(
        stdout.contains("line 1: local (rule default) -> split(15) (rule uncertain)"),
        "{stdout}"
    );
    let row = stdout.lines().find(|l| l.starts_with("split(15)")).unwrap();
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["split(15)", "0", "2"]
    );

    std::fs::write(&path, "{not json}\n").unwrap();
    let out = replay();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("trace: line 1"),
        "{}",
        text(&out.stderr)
    );
}
