//! `rr_data::synth`: determinism, a pinned output, self-verification, answer format, difficulty coverage, and the
//! JSONL writer (read back through `pack`'s GSM8K document reader).

use std::collections::BTreeMap;

use rr_data::synth::{synth_math, verify, write_synth_math, SynthProblem};
use rr_data::{read_documents, InputFormat};

#[test]
fn print_examples() {
    for p in synth_math(6, 4, 11) {
        println!(
            "Q: {}\nA: {}\n(steps {}, answer {})\n",
            p.question, p.answer, p.steps, p.final_answer
        );
    }
}

#[test]
fn deterministic_by_seed_and_prefix_stable() {
    let a = synth_math(300, 6, 42);
    let b = synth_math(300, 6, 42);
    assert_eq!(a, b);
    let c = synth_math(300, 6, 43);
    assert_ne!(a, c, "another seed must give other problems");
    let longer = synth_math(500, 6, 42);
    assert_eq!(
        &longer[..300],
        &a[..],
        "problem i depends only on (seed, i)"
    );
    // Questions are not all the same problem.
    let distinct: std::collections::HashSet<_> = a.iter().map(|p| &p.question).collect();
    assert!(
        distinct.len() > 290,
        "only {} distinct questions",
        distinct.len()
    );
}

/// The generator's output is part of every packed set made from it: a change to the wording or
/// to the order of the draws shows here first.
#[test]
fn output_is_pinned() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("synth.jsonl");
    write_synth_math(&path, &synth_math(300, 8, 7)).unwrap();
    let sha = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
    assert_eq!(
        sha,
        "beed3286271330374be634699d6fffe38e60d1aa3e18c96844f028967fab684b"
    );
}

#[test]
fn every_generated_problem_verifies_and_ends_with_its_answer() {
    let problems = synth_math(3000, 8, 7);
    let mut ops: BTreeMap<char, usize> = BTreeMap::new();
    for p in &problems {
        assert!(verify(p), "verify failed on {p:#?}");
        let last = p.answer.lines().last().unwrap();
        assert_eq!(last, format!("#### {}", p.final_answer), "{p:#?}");
        assert!(p.final_answer >= 1, "{p:#?}");
        assert_eq!(p.answer.lines().count(), p.steps + 1, "{p:#?}");
        assert!(p.question.ends_with("have now?"), "{p:#?}");
        assert!(!p.question.contains("  "), "{p:#?}");
        for line in p.answer.lines() {
            for op in ['+', '-', '*', '/'] {
                if line.contains(&format!(" {op} ")) {
                    *ops.entry(op).or_default() += 1;
                }
            }
        }
    }
    for op in ['+', '-', '*', '/'] {
        assert!(
            ops.get(&op).copied().unwrap_or(0) > 300,
            "operation {op} too rare: {ops:?}"
        );
    }
}

#[test]
fn difficulty_covers_one_to_max_steps_roughly_uniformly() {
    let max_steps = 6;
    let n = 6000;
    let mut counts = vec![0usize; max_steps + 1];
    for p in synth_math(n, max_steps, 3) {
        assert!((1..=max_steps).contains(&p.steps), "steps {}", p.steps);
        counts[p.steps] += 1;
    }
    let expected = n / max_steps;
    for (steps, &c) in counts.iter().enumerate().skip(1) {
        assert!(
            c * 10 > expected * 8 && c * 10 < expected * 12,
            "{steps} steps: {c} problems, expected about {expected}: {counts:?}"
        );
    }
    // max_steps 1 gives one-step problems only.
    assert!(synth_math(50, 1, 3).iter().all(|p| p.steps == 1));
}

fn tamper(p: &SynthProblem, f: impl FnOnce(&mut SynthProblem)) -> SynthProblem {
    let mut q = p.clone();
    f(&mut q);
    q
}

#[test]
fn verify_rejects_wrong_problems() {
    let p = synth_math(50, 5, 9)
        .into_iter()
        .find(|p| p.steps >= 3)
        .expect("a 3-step problem");
    assert!(verify(&p));
    // Wrong final answer (both places).
    assert!(!verify(&tamper(&p, |q| {
        q.final_answer += 1;
        let mut lines: Vec<String> = q.answer.lines().map(String::from).collect();
        *lines.last_mut().unwrap() = format!("#### {}", q.final_answer);
        q.answer = lines.join("\n");
    })));
    // Final answer field disagreeing with the #### line.
    assert!(!verify(&tamper(&p, |q| q.final_answer += 1)));
    // A wrong intermediate result.
    assert!(!verify(&tamper(&p, |q| {
        let mut lines: Vec<String> = q.answer.lines().map(String::from).collect();
        let line = &lines[1];
        let eq = line.find(" = ").unwrap();
        let after: String = line[eq + 3..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        let wrong = after.parse::<i64>().unwrap() + 1;
        lines[1] = format!(
            "{}{}{}",
            &line[..eq + 3],
            wrong,
            &line[eq + 3 + after.len()..]
        );
        q.answer = lines.join("\n");
    })));
    // A missing step.
    assert!(!verify(&tamper(&p, |q| {
        let mut lines: Vec<&str> = q.answer.lines().collect();
        lines.remove(1);
        q.answer = lines.join("\n");
    })));
    // Steps field disagreeing with the solution.
    assert!(!verify(&tamper(&p, |q| q.steps += 1)));
    // A question whose starting count differs from the solution's.
    assert!(!verify(&tamper(&p, |q| {
        let n: String = q.question.split_whitespace().nth(2).unwrap().to_string();
        q.question = q.question.replacen(
            &format!(" {n} "),
            &format!(" {} ", n.parse::<i64>().unwrap() + 100),
            1,
        );
    })));
}

#[test]
fn writer_is_gsm8k_jsonl_and_refuses_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/synth.jsonl");
    let problems = synth_math(40, 4, 5);
    write_synth_math(&path, &problems).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), problems.len());
    for (line, p) in lines.iter().zip(&problems) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let obj = v.as_object().unwrap();
        assert_eq!(
            obj.keys().collect::<Vec<_>>(),
            vec!["answer", "question", "steps"]
        );
        assert_eq!(v["question"], p.question.as_str());
        assert_eq!(v["answer"], p.answer.as_str());
        assert_eq!(v["steps"], p.steps as u64);
    }
    // Read back as GSM8K documents.
    let docs = read_documents(&path, InputFormat::Gsm8k).unwrap();
    assert_eq!(docs.len(), problems.len());
    assert_eq!(
        docs[0],
        format!("Q: {}\n\nA: {}", problems[0].question, problems[0].answer)
    );
    // An existing file is refused and left as it was.
    let err = write_synth_math(&path, &problems[..1]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("already exists") && msg.contains("synth.jsonl"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "left behind: {names:?}");
}
