use super::replay::{TraceRecord, replay};
use super::*;

const POLICY: &str = r#"
version = 7
default_split = 8

[[rule]]
name = "privacy"
when = 'domain in ["banking", "credit_cards"]'
action = "local"
reason = "banking stays on the device"

[[rule]]
name = "hot"
when = 'thermal == "critical" && !link_up'
action = "reject"
reason = "device too hot and no link"

[[rule]]
name = "uncertain"
when = "out_of_scope || confidence < 0.5"
action = "split(15)"

[[rule]]
name = "long"
when = "max_tokens > 256"
action = "split"

[[rule]]
name = "rest"
when = "true"
action = "auto"
"#;

fn model() -> ModelInfo {
    ModelInfo {
        layers: 30,
        split_points: vec![4, 8, 15],
    }
}

fn policy() -> Policy {
    Policy::parse(POLICY).unwrap()
}

#[test]
fn first_matching_rule_decides() {
    let p = policy();
    assert_eq!(p.version, 7);
    let mut f = Features::example();
    f.domain = "banking".into();
    f.confidence = 0.1;
    let d = p.evaluate(&f, &model());
    assert_eq!((d.rule.as_str(), &d.route), ("privacy", &Route::Local));
    assert_eq!(d.why, "banking stays on the device");

    f.domain = "travel".into();
    let d = p.evaluate(&f, &model());
    assert_eq!(
        (d.rule.as_str(), &d.route),
        ("uncertain", &Route::Split { layer: 15 })
    );

    f.confidence = 0.9;
    f.max_tokens = 300;
    let d = p.evaluate(&f, &model());
    assert_eq!(
        (d.rule.as_str(), &d.route),
        ("long", &Route::Split { layer: 8 })
    );

    f.thermal = Thermal::Critical;
    f.link_up = false;
    let d = p.evaluate(&f, &model());
    assert_eq!(d.rule, "hot");
    assert_eq!(
        d.route,
        Route::Reject {
            reason: "device too hot and no link".into()
        }
    );
}

#[test]
fn auto_follows_the_cost_model_and_explains_itself() {
    let p = policy();
    let mut f = Features::example();
    f.local_tokens_per_s = 2.0;
    f.rtt_ms = 5.0;
    let d = p.evaluate(&f, &model());
    assert_eq!(d.rule, "rest");
    assert_eq!(d.route, Route::Split { layer: 4 });
    assert!(d.why.starts_with("estimated local"), "{}", d.why);
    f.local_tokens_per_s = 500.0;
    assert_eq!(p.evaluate(&f, &model()).route, Route::Local);
}

#[test]
fn a_split_layer_the_model_lacks_goes_local() {
    let p = Policy::parse(
        "version = 1\ndefault_split = 8\n[[rule]]\nname = \"x\"\nwhen = \"true\"\naction = \"split(12)\"\n",
    )
    .unwrap();
    let d = p.evaluate(&Features::example(), &model());
    assert_eq!(d.route, Route::Local);
    assert!(d.why.contains("not a split point"), "{}", d.why);
}

#[test]
fn no_rule_matching_takes_the_default() {
    let p = Policy::parse("version = 1\ndefault_split = 4\ndefault = \"split\"\n").unwrap();
    let d = p.evaluate(&Features::example(), &model());
    assert_eq!(
        (d.rule.as_str(), &d.route),
        (DEFAULT_RULE, &Route::Split { layer: 4 })
    );
}

#[test]
fn broken_policies_are_refused_with_the_rule_named() {
    let rule = |when: &str, action: &str| {
        format!(
            "version = 1\ndefault_split = 8\n[[rule]]\nname = \"r\"\nwhen = '{when}'\naction = \"{action}\"\n"
        )
    };
    for (text, needle) in [
        (rule("confidence <", "local"), "`r`"),
        (rule("speed > 3", "local"), "unknown variable(s) speed"),
        (rule("confidence + 1.0", "local"), "not a bool"),
        (
            rule("confidence + 1", "local"),
            "Unsupported binary operator",
        ),
        (rule("intent > 3", "local"), "`r`"),
        (rule("true", "cloud"), "not one of"),
        (rule("true", "reject"), "reject needs a reason"),
        ("version = 1\n".into(), "default_split"),
        (
            "version = 1\ndefault_split = 8\nextra = 1\n".into(),
            "extra",
        ),
        ("version = 1\ndefault_split = 0\n".into(), "default_split"),
        (
            "version = 1\ndefault_split = 8\n[auto]\ntokens_per_round_trip = 0.5\n".into(),
            "tokens_per_round_trip",
        ),
        ("not toml at all [".into(), ""),
    ] {
        let err = Policy::parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("policy: "), "{err}");
        assert!(err.contains(needle), "{text:?}: {err}");
    }
    let twice = format!(
        "{}{}",
        rule("true", "local"),
        "[[rule]]\nname = \"r\"\nwhen = \"true\"\naction = \"local\"\n"
    );
    assert!(
        Policy::parse(&twice)
            .unwrap_err()
            .to_string()
            .contains("used twice")
    );
}

#[test]
fn a_condition_failing_at_run_time_does_not_match_and_is_reported() {
    // `intent` compared with an int only fails when reached: the example request takes the
    // first branch, a banking request does not.
    let p = Policy::parse(
        r#"version = 1
default_split = 8
[[rule]]
name = "odd"
when = 'domain != "banking" || intent > 3'
action = "split(4)"
"#,
    )
    .unwrap();
    let mut f = Features::example();
    f.domain = "banking".into();
    let d = p.evaluate(&f, &model());
    assert_eq!((d.rule.as_str(), &d.route), (DEFAULT_RULE, &Route::Local));
    assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
    assert!(d.errors[0].starts_with("odd: "));
}

#[test]
fn replay_counts_routes_and_lists_changes() {
    let old = Policy::parse("version = 1\ndefault_split = 8\n").unwrap();
    let new = policy();
    let mut lines = String::new();
    let mut banking = Features::example();
    banking.domain = "banking".into();
    let mut oos = Features::example();
    oos.out_of_scope = true;
    let mut fast = Features::example();
    fast.local_tokens_per_s = 500.0;
    for f in [&banking, &oos, &fast, &oos] {
        let rec = TraceRecord {
            features: f.clone(),
            model: model(),
            decision: old.evaluate(f, &model()),
        };
        lines.push_str(&serde_json::to_string(&rec).unwrap());
        lines.push('\n');
    }
    let r = replay(&new, lines.as_bytes()).unwrap();
    assert_eq!(r.requests, 4);
    assert_eq!(r.before.get("local"), Some(&4));
    assert_eq!(r.after.get("local"), Some(&2));
    assert_eq!(r.after.get("split(15)"), Some(&2));
    assert_eq!(r.by_rule.get("uncertain"), Some(&2));
    let changed: Vec<usize> = r.changes.iter().map(|c| c.line).collect();
    assert_eq!(changed, vec![2, 4]);

    let err = replay(&new, "{\"features\": 1}\n".as_bytes())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("trace: line 1"), "{err}");
    let mut bad = serde_json::to_value(TraceRecord {
        features: banking.clone(),
        model: model(),
        decision: old.evaluate(&banking, &model()),
    })
    .unwrap();
    bad["features"]["confidence"] = serde_json::json!(3.0);
    let err = replay(&new, format!("\n{bad}\n").as_bytes())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 2") && err.contains("confidence"),
        "{err}"
    );
}

#[test]
fn decisions_serialize_flat() {
    let d = policy().evaluate(&Features::example(), &model());
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["policy_version"], 7);
    assert!(v["route"].is_string(), "{v}");
    let back: Decision = serde_json::from_value(v).unwrap();
    assert_eq!(back, d);
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Arbitrary text never panics the policy parser.
        #[test]
        fn any_text_parses_or_errs(text in ".{0,400}") {
            let _ = Policy::parse(&text);
        }

        /// Arbitrary conditions in an otherwise valid file never panic compile or evaluate.
        #[test]
        fn any_condition_compiles_or_errs(when in "[a-z_ <>=!&|().0-9\"\\[\\],+*-]{0,80}") {
            let text = format!(
                "version = 1\ndefault_split = 8\n[[rule]]\nname = \"r\"\nwhen = {}\naction = \"auto\"\n",
                toml::Value::String(when)
            );
            if let Ok(p) = Policy::parse(&text) {
                let _ = p.evaluate(&Features::example(), &model());
            }
        }
    }
}
