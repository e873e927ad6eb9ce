//! Results JSON (harness-shaped, per recurrence) and the markdown table.

use rr_eval::results::*;
use rr_eval::tasks::{GenRequest, McItem};
use serde_json::json;

fn mc_items() -> Vec<McItem> {
    // Lengths for acc_norm are the choice texts without the delimiter: 3 and 8.
    let item = |gold| McItem {
        id: "t".into(),
        contexts: vec!["Q".into()],
        continuations: vec![" cat".into(), " elephant".into()],
        gold,
    };
    vec![item(1), item(0)]
}

#[test]
fn multiple_choice_scores() {
    // Item 1: lls (-6, -8): acc → 0, acc_norm → 1 (-2 vs -1). gold 1: acc 0, acc_norm 1.
    // Item 2: lls (-1, -4): both → 0. gold 0: 1, 1.
    let m = score_multiple_choice(&mc_items(), &[vec![-6.0, -8.0], vec![-1.0, -4.0]]).unwrap();
    assert_eq!(m["acc,none"], json!(0.5));
    assert_eq!(m["acc_norm,none"], json!(1.0));
    // [0, 1]: sample std sqrt(0.5) / sqrt(2) = 0.5.
    assert!((m["acc_stderr,none"].as_f64().unwrap() - 0.5).abs() < 1e-12);
    assert_eq!(m["acc_norm_stderr,none"], json!(0.0));
    assert!(score_multiple_choice(&mc_items(), &[vec![-1.0]]).is_err());
    assert!(score_multiple_choice(&mc_items(), &[vec![-1.0], vec![-1.0, -2.0]]).is_err());
}

fn gen(reference: &str, difficulty: Option<usize>) -> GenRequest {
    GenRequest {
        id: "g".into(),
        prompt: String::new(),
        reference: reference.into(),
        stop: vec!["Q:".into()],
        difficulty,
        subject: None,
    }
}

#[test]
fn gsm8k_math_and_synth_scores() {
    let reqs = [gen("18", None), gen("1,000", None)];
    let gens = ["So $18.\n#### 18".to_string(), "It is $1,000.".to_string()];
    let m = score_gsm8k(&reqs, &gens, rr_eval::metrics::Gsm8kStrict::Hashes).unwrap();
    assert_eq!(m["exact_match,strict-match"], json!(0.5));
    assert_eq!(m["exact_match,flexible-extract"], json!(1.0));

    let reqs = [gen(r"\frac{3}{4}", None), gen("5", None)];
    let gens = [
        r"So $\boxed{\dfrac34}$.".to_string(),
        "Final Answer: The final answer is $6$. I hope it is correct.".to_string(),
    ];
    let m = score_math(&reqs, &gens).unwrap();
    // Minerva's exact match reads only the final-answer line (no \boxed fallback, as the
    // harness); math_verify finds the box and equates \dfrac34 with \frac{3}{4}.
    assert_eq!(m["exact_match,none"], json!(0.0));
    assert_eq!(m["math_verify,none"], json!(0.5));

    // Per-subject tasks with the harness's suffixes; the overall score is the item mean.
    let subject = |s: &str, reference: &str| GenRequest {
        subject: Some(s.into()),
        ..gen(reference, None)
    };
    let reqs = [
        subject("Number Theory", "4"),
        subject("Number Theory", "5"),
        subject("Counting & Probability", r"\frac{1}{2}"),
    ];
    let gens = [
        "Final Answer: The final answer is $4$. I hope it is correct.".to_string(),
        "Final Answer: The final answer is $4$. I hope it is correct.".to_string(),
        "Final Answer: The final answer is $0.5$. I hope it is correct.".to_string(),
    ];
    let mut out = EvalResults::default();
    add_math(&mut out, "math", &reqs, &gens, 5000).unwrap();
    assert_eq!(
        out.n_samples["math"],
        NSamples {
            original: 5000,
            effective: 3
        }
    );
    assert_eq!(
        out.results["math_num_theory"]["exact_match,none"],
        json!(0.5)
    );
    assert_eq!(
        out.results["math_counting_and_prob"]["math_verify,none"],
        json!(1.0)
    );
    let overall = out.results["math"]["math_verify,none"].as_f64().unwrap();
    assert!((overall - 2.0 / 3.0).abs() < 1e-12, "{overall}");
    assert_eq!(
        math_subject_suffix("Intermediate Algebra"),
        "intermediate_algebra"
    );
    assert_eq!(math_subject_suffix("Precalculus"), "precalc");

    let reqs = [gen("3", Some(1)), gen("4", Some(2)), gen("5", Some(2))];
    let gens = [
        "#### 3".to_string(),
        "#### 4".to_string(),
        "#### 6".to_string(),
    ];
    let mut out = EvalResults::default();
    add_synth(&mut out, &reqs, &gens, 10).unwrap();
    assert_eq!(
        out.n_samples["synth"],
        NSamples {
            original: 10,
            effective: 3
        }
    );
    assert_eq!(
        out.results["synth_steps_1"]["exact_match,strict-match"],
        json!(1.0)
    );
    assert_eq!(
        out.results["synth_steps_1"]["exact_match_stderr,strict-match"],
        json!("N/A")
    );
    assert_eq!(
        out.results["synth_steps_2"]["exact_match,flexible-extract"],
        json!(0.5)
    );
    assert_eq!(
        out.n_samples["synth_steps_2"],
        NSamples {
            original: 2,
            effective: 2
        }
    );
}

fn report() -> RecurrenceReport {
    let mut report = RecurrenceReport {
        config: json!({"model": "m"}),
        ..Default::default()
    };
    for (r, acc) in [(1u32, 0.25), (4, 0.5), (16, 0.75)] {
        let mut res = EvalResults {
            config: json!({"recurrence": r}),
            ..Default::default()
        };
        let mut m = Metrics::new();
        insert_mean(&mut m, "acc", "none", &[acc, acc]);
        res.add(
            "arc_easy",
            m,
            NSamples {
                original: 2376,
                effective: 2,
            },
        );
        if r != 16 {
            let mut m = Metrics::new();
            insert_mean(&mut m, "exact_match", "flexible-extract", &[1.0, 0.0]);
            res.add(
                "gsm8k",
                m,
                NSamples {
                    original: 1319,
                    effective: 2,
                },
            );
        }
        report.recurrences.insert(r, res);
    }
    report
}

#[test]
fn json_shape_and_round_trip() {
    let report = report();
    let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(
        v["recurrences"]["4"]["results"]["arc_easy"]["acc,none"],
        json!(0.5)
    );
    assert_eq!(
        v["recurrences"]["4"]["results"]["arc_easy"]["acc_stderr,none"],
        json!(0.0)
    );
    assert_eq!(
        v["recurrences"]["1"]["n-samples"]["gsm8k"],
        json!({"original": 1319, "effective": 2})
    );
    assert_eq!(v["recurrences"]["16"]["config"]["recurrence"], json!(16));
    assert_eq!(v["config"]["model"], json!("m"));
    // Numeric order of recurrences in the file: 1, 4, 16.
    let keys: Vec<&String> = v["recurrences"].as_object().unwrap().keys().collect();
    let text = report.to_json();
    let pos: Vec<usize> = ["\"1\":", "\"4\":", "\"16\":"]
        .iter()
        .map(|k| text.find(k).unwrap())
        .collect();
    assert!(pos[0] < pos[1] && pos[1] < pos[2], "{keys:?}");
    assert_eq!(RecurrenceReport::from_json(&text).unwrap(), report);
    assert!(RecurrenceReport::from_json("{").is_err());
}

#[test]
fn markdown_table() {
    let md = report().to_markdown();
    let expected = "\
| task | metric | r=1 | r=4 | r=16 |
|---|---|---:|---:|---:|
| arc_easy | acc,none | 0.2500 ± 0.0000 | 0.5000 ± 0.0000 | 0.7500 ± 0.0000 |
| gsm8k | exact_match,flexible-extract | 0.5000 ± 0.5000 | 0.5000 ± 0.5000 | – |
";
    assert_eq!(md, expected);
}
