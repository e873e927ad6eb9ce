//! Task loaders on the real data files (`RR_SHARED_DATA`, default `<workspace>/../shared/data`;
//! absent → skipped with a reason, except under `CI=true`).

use std::io::Write;

use rr_eval::tasks::*;
use rr_util::test_data::shared_data as data_dir;
use sha2::{Digest, Sha256};

// The harness's target delimiter " " follows "Solution:" (method.md §6); before, rr wrote "\n".
const MATH_EXEMPLAR: &str = "Problem:\nFind the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.}\n\nSolution: The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, so $x\\ge2$, and $5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, so $5-x>0$, which gives $x<5$. Therefore, the domain of the expression is $\\boxed{[2,5)}$.\nFinal Answer: The final answer is $[2,5)$. I hope it is correct.\n\n";

const GSM8K_EXEMPLAR: &str = "Q: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?\n\nA: Let's think step by step. Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n#### 72\n\n";

#[test]
fn counts() {
    let Some(dir) = data_dir() else { return };
    for (task, n) in [
        (Task::ArcEasy, 2376),
        (Task::ArcChallenge, 1172),
        (Task::OpenBookQa, 500),
        (Task::Piqa, 1838),
        (Task::Winogrande, 1267),
        (Task::Hellaswag, 10042),
        (Task::Hellaswag1000, 1000),
        (Task::Gsm8k, 1319),
        (Task::Gsm8kRr, 1319),
        (Task::Math, 5000),
        (Task::Math500, 500),
    ] {
        let d = load(task, &dir, None).unwrap();
        assert_eq!((d.n_original, d.requests.len()), (n, n), "{task}");
        let d = load(task, &dir, Some(7)).unwrap();
        assert_eq!((d.n_original, d.requests.len()), (n, 7), "{task} limited");
    }
}

fn first_mc(task: Task) -> Option<McItem> {
    let dir = data_dir()?;
    let d = load(task, &dir, Some(1)).unwrap();
    Some(d.multiple_choice().unwrap()[0].clone())
}

#[test]
fn first_items_multiple_choice() {
    let Some(arc) = first_mc(Task::ArcEasy) else {
        return;
    };
    assert_eq!(arc.contexts, ["Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:"]);
    assert_eq!(
        arc.continuations,
        [
            " Sunlight is the source of energy for nearly all ecosystems.",
            " Most ecosystems are found on land instead of in water.",
            " Carbon dioxide is more available than other gases.",
            " The producers in all ecosystems are plants.",
        ]
    );
    assert_eq!(arc.gold, 0);
    assert_eq!(
        arc.norm_lengths()[3],
        "The producers in all ecosystems are plants.".len()
    );

    let arc = first_mc(Task::ArcChallenge).unwrap();
    assert_eq!(arc.contexts, ["Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most likely effect of this increase in rotation?\nAnswer:"]);
    assert_eq!(arc.continuations[2], " Planetary days will become shorter.");
    assert_eq!(arc.gold, 2);

    let obqa = first_mc(Task::OpenBookQa).unwrap();
    assert_eq!(obqa.contexts, ["A person wants to start saving money so that they can afford a nice vacation at the end of the year. After looking over their budget and expenses, they decide the best way to save money is to"]);
    assert_eq!(
        obqa.continuations,
        [
            " make more phone calls",
            " quit eating lunch out",
            " buy less with monopoly money",
            " have lunch with friends"
        ]
    );
    assert_eq!(obqa.gold, 1);

    let piqa = first_mc(Task::Piqa).unwrap();
    assert_eq!(
        piqa.contexts,
        ["Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"]
    );
    assert_eq!(piqa.continuations, [
        " Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will also need to supply it with a water bottle and a food dish.",
        " Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, you will also need to supply it with a water bottle and a food dish.",
    ]);
    assert_eq!(piqa.gold, 0);

    let wg = first_mc(Task::Winogrande).unwrap();
    assert_eq!(
        wg.contexts,
        [
            "Sarah was a much better surgeon than Maria so Sarah",
            "Sarah was a much better surgeon than Maria so Maria"
        ]
    );
    assert_eq!(wg.continuations, [" always got the easier cases."]);
    assert_eq!(wg.gold, 1);
    assert_eq!(
        wg.pairs(),
        [
            (
                "Sarah was a much better surgeon than Maria so Sarah",
                " always got the easier cases."
            ),
            (
                "Sarah was a much better surgeon than Maria so Maria",
                " always got the easier cases."
            ),
        ]
    );

    let hs = first_mc(Task::Hellaswag1000).unwrap();
    // ctx_b "a few women" capitalised; activity label prefixed.
    assert_eq!(hs.contexts, ["Pole vault: Pole vault is a sport where you run with a pole and stop and swing your body. A few women"]);
    assert_eq!(
        hs.continuations,
        [
            " go down a rock and stop.",
            " watch from around a pole vault.",
            " are in the wading pool.",
            " are in the gym practicing to do this pole vault, trying to do their best.",
        ]
    );
    assert_eq!(hs.gold, 3);
}

#[test]
fn hellaswag_wikihow_preprocessing() {
    let Some(dir) = data_dir() else { return };
    let d = load(Task::Hellaswag1000, &dir, Some(4)).unwrap();
    let item = &d.multiple_choice().unwrap()[3];
    // Row 4 (ind 670): "[header] …[title] …[step] …", empty ctx_b; harness `preprocess`
    // output worked out with Python's `re`.
    assert_eq!(item.contexts, ["Sports and Fitness: How to bowl the leg spinner's variations. To bowl a googly, you grip the ball the same as you would for a leg break but hold it so your palm faces away from you. As you bowl, you bring your elbow close to your head and cock your wrist so that back of your hand faces the batsman. You spin the ball by rotating the fingers."]);
    assert_eq!(item.continuations[0], "  If you're outside, the batsman only looks at the batsman as they dribble.. If you're inside, the batsman lets you line up the batsman with you.");
    assert_eq!(item.continuations[1], " Bring your wrist back towards your head so that the ball is back in front of your body and your fist will be holding the ball. A barbell is not needed for this style of bowl.");
    assert_eq!(item.gold, 2);
    assert_eq!(python_capitalize("a FEW women"), "A few women");
    assert_eq!(python_capitalize(""), "");
}

/// A model trained on `gsm8k-rr` documents meets at evaluation exactly the text it was trained
/// on: the `synth` / `gsm8k_rr` prompt followed by the target delimiter and the answer is the
/// exemplar's document, the documents' separator and the problem's document.
#[test]
fn gsm8k_rr_documents_are_what_the_synth_prompt_continues() {
    let problem = &rr_data::synth_math(1, 3, 75)[0];
    let (q, a) = (problem.question.as_str(), problem.answer.as_str());
    let exemplar = rr_data::gsm8k_rr_document(GSM8K_EXEMPLAR_QUESTION, GSM8K_EXEMPLAR_ANSWER);
    assert_eq!(
        format!("{} {a}", gsm8k_rr_prompt(q)),
        format!("{exemplar}\n\n{}", rr_data::gsm8k_rr_document(q, a))
    );
    // The plain `gsm8k` document does not continue it.
    assert!(!format!("{} {a}", gsm8k_rr_prompt(q)).ends_with(&rr_data::gsm8k_document(q, a)));
}

#[test]
fn first_items_generative() {
    let Some(dir) = data_dir() else { return };
    let d = load(Task::Gsm8kRr, &dir, Some(1)).unwrap();
    let r = &d.generate().unwrap()[0];
    assert_eq!(r.prompt, format!("{GSM8K_EXEMPLAR}Q: Janet\u{2019}s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. How much in dollars does she make every day at the farmers' market?\n\nA: Let's think step by step."));
    assert_eq!(r.reference, "18");
    assert_eq!(r.stop, ["Q:"]);
    assert_eq!(r.difficulty, None);

    // The exemplar is GSM8K train row 1, calculator annotations removed.
    let train = std::fs::read_to_string(dir.join("gsm8k/train.jsonl")).unwrap();
    let row: serde_json::Value = serde_json::from_str(train.lines().next().unwrap()).unwrap();
    assert_eq!(row["question"], GSM8K_EXEMPLAR_QUESTION);
    assert_eq!(
        strip_calculator_annotations(row["answer"].as_str().unwrap()),
        GSM8K_EXEMPLAR_ANSWER
    );

    let d = load(Task::Math500, &dir, Some(1)).unwrap();
    let r = &d.generate().unwrap()[0];
    assert_eq!(r.prompt, format!("{MATH_EXEMPLAR}Problem:\nConvert the point $(0,3)$ in rectangular coordinates to polar coordinates.  Enter your answer in the form $(r,\\theta),$ where $r > 0$ and $0 \\le \\theta < 2 \\pi.$\n\nSolution:"));
    assert_eq!(r.reference, "\\left( 3, \\frac{\\pi}{2} \\right)");
    assert_eq!(r.id, "test/precalculus/807.json");
    assert_eq!(r.stop, ["Problem:"]);
}

fn digest_mc(items: &[McItem]) -> String {
    let mut h = Sha256::new();
    for it in items {
        h.update(format!(
            "{}\x1e{}\x1e{}\n",
            it.contexts.join("\x1f"),
            it.continuations.join("\x1f"),
            it.gold
        ));
    }
    hex::encode(h.finalize())
}

/// Every request of every file against digests computed independently in Python from the
/// harness's definitions (HellaSwag with the harness's own `preprocess` and `str.capitalize`).
#[test]
fn all_items_match_python_reference() {
    let Some(dir) = data_dir() else { return };
    for (task, want) in [
        (
            Task::ArcEasy,
            "8b8ef373d3845ddf65b4eb149485cdf04fcd5af1583cd48edd1d722ae6d4c0cf",
        ),
        (
            Task::ArcChallenge,
            "b3eca9a7fa20e39237d70d5e820be3118ed3e0699a81b0eba827dad8c12342db",
        ),
        (
            Task::OpenBookQa,
            "c7350a785e447f2b64e0691f605ed2c7a6088413cc8a532c9c3d6cde54d9aeb3",
        ),
        (
            Task::Piqa,
            "8349ee9b7b50f1e12a21a8b4a5e97e6b72b53a7585cce6670f70a3c7618b3ecc",
        ),
        (
            Task::Winogrande,
            "c1639a4065403e1d5f904faca8740183180fa1e229fdfd33efbae3af03c67f28",
        ),
        (
            Task::Hellaswag1000,
            "fb2bb474661727baf3bade750aee35094ae7320b74af2b95a17b0264e338f8ba",
        ),
    ] {
        let d = load(task, &dir, None).unwrap();
        assert_eq!(digest_mc(d.multiple_choice().unwrap()), want, "{task}");
    }
    let d = load(Task::Gsm8kRr, &dir, None).unwrap();
    let as_items: Vec<McItem> = d
        .generate()
        .unwrap()
        .iter()
        .map(|r| McItem {
            id: r.id.clone(),
            contexts: vec![r.prompt.clone()],
            continuations: vec![r.reference.clone()],
            gold: 0,
        })
        .collect();
    assert_eq!(
        digest_mc(&as_items),
        "fa964ee57fcd153ca5fa50f35cb454fe3d1242126435b2217fd96eb7287dde0a"
    );
}

#[test]
fn math500_references_equal_themselves_and_their_solutions_box() {
    let Some(dir) = data_dir() else { return };
    let d = load(Task::Math500, &dir, None).unwrap();
    let text = std::fs::read_to_string(dir.join("math/MATH500_test.jsonl")).unwrap();
    let mut boxed_agree = 0;
    for (r, line) in d.generate().unwrap().iter().zip(text.lines()) {
        assert!(
            rr_eval::metrics::math_equal(&r.reference, &r.reference),
            "{}",
            r.reference
        );
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let boxed = rr_eval::metrics::last_boxed(row["solution"].as_str().unwrap()).unwrap();
        boxed_agree += usize::from(rr_eval::metrics::math_equal(&boxed, &r.reference));
    }
    // The `answer` field is the solution's last box, up to normalisation, nearly always.
    assert!(boxed_agree >= 490, "{boxed_agree}/500");
}

fn temp_file(contents: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(contents.as_bytes()).unwrap();
    f
}

#[test]
fn malformed_rows_name_file_and_line() {
    let f = temp_file("{\"query\": \"q\", \"choices\": [\"a\", \"b\"], \"gold\": 0}\n\n{\"query\": \"q\", \"choices\": [\"a\"]}\n");
    let e = load_file(Task::ArcEasy, f.path(), None)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with(&format!("{}:3: ", f.path().display())), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");

    let f = temp_file("{\"query\": \"q\", \"choices\": [\"a\", \"b\"], \"gold\": 2}\n");
    let e = load_file(Task::Piqa, f.path(), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("{}:1: ", f.path().display())) && e.contains("gold 2 out of range"),
        "{e}"
    );

    let f = temp_file("{\"question\": \"q\", \"answer\": \"#### 3\"}\nnot json\n");
    let e = load_file(Task::Gsm8k, f.path(), None)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with(&format!("{}:2: ", f.path().display())), "{e}");

    let f = temp_file("{\"question\": \"q\", \"answer\": \"3\"}\n");
    let e = load_file(Task::Gsm8k, f.path(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains(":1: ") && e.contains("####"), "{e}");

    let f = temp_file("{\"question\": \"q\", \"answer\": \"#### 3\"}\n");
    let e = load_file(Task::Synth, f.path(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains(":1: ") && e.contains("steps"), "{e}");

    let e = load_file(
        Task::Gsm8k,
        std::path::Path::new("/nonexistent/x.jsonl"),
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/x.jsonl"), "{e}");
}

#[test]
fn synth_rows_carry_difficulty() {
    let f = temp_file("{\"question\": \"Mia has 7 shells. She finds 5 more shells. How many shells does Mia have now?\", \"answer\": \"Mia has 7 shells and finds 5 more, so she has 7 + 5 = 12 shells.\\n#### 12\", \"steps\": 1}\n");
    let d = load(Task::Synth, f.path(), None).unwrap();
    let r = &d.generate().unwrap()[0];
    assert_eq!(r.difficulty, Some(1));
    assert_eq!(r.reference, "12");
    assert!(r.prompt.starts_with(GSM8K_EXEMPLAR));
    assert!(r.prompt.ends_with("Q: Mia has 7 shells. She finds 5 more shells. How many shells does Mia have now?\n\nA: Let's think step by step."));
}

#[test]
fn task_names() {
    for t in Task::ALL {
        assert_eq!(Task::parse(t.name()).unwrap(), t);
        assert_eq!(t.name().parse::<Task>().unwrap(), t);
    }
    let e = Task::parse("mmlu").unwrap_err().to_string();
    assert_eq!(e, "unknown task `mmlu`; known tasks: gsm8k, gsm8k_rr, math, math500, arc_easy, arc_challenge, openbookqa, piqa, winogrande, hellaswag, hellaswag_1000, synth");
}

/// The authors' `gsm8k_cot_sean` prompt, written out by hand from method.md §6 (the harness's
/// first `gsm8k-cot` exemplar, one newline before `A:`, `" "` before the exemplar's answer).
#[test]
fn gsm8k_prompt_is_gsm8k_cot_sean() {
    let want = "Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?\nA: Let's think step by step. There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. The answer is 6.\n\nQ: Janet\u{2019}s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. How much in dollars does she make every day at the farmers' market?\nA: Let's think step by step.";
    let Some(dir) = data_dir() else { return };
    let d = load(Task::Gsm8k, &dir, Some(2)).unwrap();
    let r = &d.generate().unwrap()[0];
    assert_eq!(r.prompt, want);
    assert_eq!(r.reference, "18");
    assert_eq!(r.stop, ["Q:", "</s>", "<|im_end|>"]);
    assert_eq!(
        gsm8k_cot_prompt("What is 1+1?"),
        format!(
            "{}What is 1+1?\nA: Let's think step by step.",
            &want[..want.find("Janet").unwrap()]
        )
    );
}

/// `math`: all 5,000 problems, seven subjects, references from each solution's last box.
#[test]
fn math_full_subjects_and_references() {
    let Some(dir) = data_dir() else { return };
    let d = load(Task::Math, &dir, None).unwrap();
    let reqs = d.generate().unwrap();
    let mut subjects = std::collections::BTreeMap::new();
    for r in reqs {
        *subjects.entry(r.subject.clone().unwrap()).or_insert(0) += 1;
    }
    assert_eq!(
        subjects.into_iter().collect::<Vec<_>>(),
        [
            ("Algebra".to_string(), 1187),
            ("Counting & Probability".to_string(), 474),
            ("Geometry".to_string(), 479),
            ("Intermediate Algebra".to_string(), 903),
            ("Number Theory".to_string(), 540),
            ("Prealgebra".to_string(), 871),
            ("Precalculus".to_string(), 546),
        ]
    );
    // First row: "… the graph has $\boxed{2}$ vertical asymptotes."
    assert_eq!(reqs[0].reference, "2");
    assert_eq!(reqs[0].id, "test/algebra/1.json");
    assert!(reqs[0].prompt.ends_with("Problem:\nHow many vertical asymptotes does the graph of $y=\\frac{2}{x^2+x-6}$ have?\n\nSolution:"));
    // Every reference is equivalent to itself under both scorers' normalisers.
    for r in reqs {
        let line = format!(
            "Final Answer: The final answer is ${}$. I hope it is correct.",
            r.reference
        );
        assert!(
            rr_eval::math_verify::math_verify(&line, &r.reference),
            "{}",
            r.reference
        );
    }
}

/// The full HellaSwag file against the 1,000 items that have their original fields: every
/// query equal to the harness's; endings equal except where the original started with a tag
/// (the harness keeps a leading space there, which the file lost; see `tasks/mc.rs`).
#[test]
fn hellaswag_full_agrees_with_the_subset() {
    let Some(dir) = data_dir() else { return };
    let full = load(Task::Hellaswag, &dir, None).unwrap();
    let full = full.multiple_choice().unwrap();
    let subset = load(Task::Hellaswag1000, &dir, None).unwrap();
    let endings = |item: &McItem| -> Vec<String> {
        item.continuations
            .iter()
            .map(|c| c.trim_start().to_string())
            .collect()
    };
    let mut by_endings = std::collections::HashMap::new();
    for item in full {
        by_endings.insert(endings(item), item);
    }
    let (mut found, mut leading_space) = (0, 0);
    for item in subset.multiple_choice().unwrap() {
        let Some(f) = by_endings.get(&endings(item)) else {
            continue;
        };
        found += 1;
        assert_eq!(f.contexts, item.contexts);
        assert_eq!(f.gold, item.gold);
        for (a, b) in f.continuations.iter().zip(&item.continuations) {
            if a != b {
                assert_eq!(format!(" {a}"), *b);
                leading_space += 1;
            }
        }
    }
    assert_eq!((found, leading_space), (1000, 134));
    assert_eq!(
        full[0].contexts,
        ["Roof shingle removal: A man is sitting on a roof. He"]
    );
    assert_eq!(
        full[0].continuations[3],
        " starts pulling up roofing on a roof."
    );
    assert_eq!(full[0].gold, 3);
}

#[test]
fn hellaswag_query_reconstruction() {
    // ActivityNet: ctx_b after the last ". " is capitalised (the rest lower-cased).
    assert_eq!(
        hellaswag_query_from_line("Clean and jerk: A lady walks. She bends. the lady"),
        "Clean and jerk: A lady walks. She bends. The lady"
    );
    // WikiHow (ends in a period): used as it is, then preprocess.
    assert_eq!(
        hellaswag_query_from_line("Health: How to x. Do y.  Then z."),
        "Health: How to x. Do y. Then z."
    );
}

#[test]
fn hellaswag_full_malformed_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("mc");
    std::fs::create_dir(&bad).unwrap();
    let file = bad.join("hellaswag_val_full.txt.bz2");
    std::fs::write(&file, b"not bzip2").unwrap();
    let e = load(Task::Hellaswag, dir.path(), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("hellaswag_val_full.txt.bz2") && e.contains("bzip2"),
        "{e}"
    );
    let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    enc.write_all(b"Label: ctx. he\nseven\na\nb\nc\nd\n")
        .unwrap();
    std::fs::write(&file, enc.finish().unwrap()).unwrap();
    let e = load(Task::Hellaswag, dir.path(), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("hellaswag_val_full.txt.bz2:2: malformed row: label \"seven\""),
        "{e}"
    );
}
