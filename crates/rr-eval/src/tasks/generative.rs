//! Generative tasks: GSM8K (the authors' `gsm8k_cot_sean`), `gsm8k_rr` and synth (rr's own
//! GSM8K format), and MATH (`minerva_math`: all of it, or the MATH500 subset).
//!
//! All prompts are lm-evaluation-harness few-shot contexts: the exemplar's query, the target
//! delimiter `" "`, the exemplar's target, the few-shot delimiter `"\n\n"`, then the query.
//!
//! `gsm8k` (method.md §6): 1-shot chain of thought, the shot being the harness's first CoT
//! exemplar (`gsm8k-cot.yaml`), query `Q: {question}\nA: Let's think step by step.`:
//!
//! ```text
//! Q: There are 15 trees in the grove. … How many trees did the grove workers plant today?\n
//! A: Let's think step by step. There are 15 trees originally. … The answer is 6.\n\n
//! Q: {question}\nA: Let's think step by step.
//! ```
//!
//! Stop at `Q:`, `</s>`, `<|im_end|>` (and EOS). Scored by `The answer is …` (strict) and the
//! last number (flexible): [`crate::metrics::Gsm8kStrict::AnswerIs`].
//!
//! `gsm8k_rr` and `synth` (rr's earlier prompt, kept for models trained on `#### N` answers):
//! `Q: {q}\n\nA: Let's think step by step. {answer}\n\nQ: {question}\n\nA: Let's think step
//! by step.` with GSM8K **train row 1** (Natalia's clips, calculator annotations `<<…>>`
//! removed, ending in `#### 72`) as the shot; stop at `Q:`; strict match on `#### N`
//! ([`crate::metrics::Gsm8kStrict::Hashes`], the harness's plain `gsm8k` filter).
//!
//! `math` / `math500`: the harness's `minerva_math` prompt cut to its first exemplar (1-shot):
//! `Problem:\n{p}\n\nSolution: {solution … Final Answer: The final answer is $[2,5)$. I hope it
//! is correct.}\n\nProblem:\n{problem}\n\nSolution:` (exemplar text verbatim, including the
//! original's stray `}`). Stop at `Problem:`. The reference is the content of the solution's
//! last `\boxed{}` (the harness's `process_docs`), for MATH500 too (its `answer` field is the
//! same box). `subject` is the dataset's `type` (MATH) or `subject` (MATH500).

use std::path::Path;

use anyhow::Result;
use serde::Deserialize;

use super::{read_jsonl, GenRequest, Task};
use crate::metrics::last_boxed;

/// The harness's first GSM8K chain-of-thought exemplar (`gsm8k-cot.yaml`).
pub const GSM8K_COT_EXEMPLAR_QUESTION: &str = "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?";
pub const GSM8K_COT_EXEMPLAR_TARGET: &str = "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. The answer is 6.";
/// `gsm8k_cot_sean`'s stop strings (EOS stops generation too).
pub const GSM8K_COT_STOP: [&str; 3] = ["Q:", "</s>", "<|im_end|>"];

/// `gsm8k_rr`'s exemplar: GSM8K train row 1 without calculator annotations.
pub const GSM8K_EXEMPLAR_QUESTION: &str = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?";
pub const GSM8K_EXEMPLAR_ANSWER: &str = "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n#### 72";
pub const GSM8K_STOP: &str = "Q:";

pub const MATH_EXEMPLAR_PROBLEM: &str =
    r"Find the domain of the expression  $\frac{\sqrt{x-2}}{\sqrt{5-x}}$.}";
pub const MATH_EXEMPLAR_SOLUTION: &str = r"The expressions inside each square root must be non-negative. Therefore, $x-2 \ge 0$, so $x\ge2$, and $5 - x \ge 0$, so $x \le 5$. Also, the denominator cannot be equal to zero, so $5-x>0$, which gives $x<5$. Therefore, the domain of the expression is $\boxed{[2,5)}$.
Final Answer: The final answer is $[2,5)$. I hope it is correct.";
pub const MATH_STOP: &str = "Problem:";

/// Removes GSM8K calculator annotations `<<…>>`.
pub fn strip_calculator_annotations(answer: &str) -> String {
    let mut out = String::with_capacity(answer.len());
    let mut rest = answer;
    while let Some(start) = rest.find("<<") {
        match rest[start..].find(">>") {
            Some(end) => {
                out.push_str(&rest[..start]);
                rest = &rest[start + end + 2..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out
}

/// `gsm8k_cot_sean`'s query for one question.
fn gsm8k_cot_query(question: &str) -> String {
    format!("Q: {question}\nA: Let's think step by step.")
}

/// The 1-shot `gsm8k_cot_sean` prompt for `question` (task `gsm8k`).
pub fn gsm8k_cot_prompt(question: &str) -> String {
    format!(
        "{} {GSM8K_COT_EXEMPLAR_TARGET}\n\n{}",
        gsm8k_cot_query(GSM8K_COT_EXEMPLAR_QUESTION),
        gsm8k_cot_query(question)
    )
}

/// rr's earlier 1-shot prompt for `question` (tasks `gsm8k_rr` and `synth`).
pub fn gsm8k_rr_prompt(question: &str) -> String {
    format!(
        "Q: {GSM8K_EXEMPLAR_QUESTION}\n\nA: Let's think step by step. {GSM8K_EXEMPLAR_ANSWER}\n\n\
         Q: {question}\n\nA: Let's think step by step."
    )
}

/// The 1-shot Minerva MATH prompt for `problem`.
pub fn math_prompt(problem: &str) -> String {
    format!(
        "Problem:\n{MATH_EXEMPLAR_PROBLEM}\n\nSolution: {MATH_EXEMPLAR_SOLUTION}\n\n\
         Problem:\n{problem}\n\nSolution:"
    )
}

#[derive(Deserialize)]
struct GsmRow {
    question: String,
    answer: String,
    #[serde(default)]
    steps: Option<usize>,
}

pub(super) fn gsm8k_requests(task: Task, file: &Path) -> Result<Vec<GenRequest>> {
    let synth = task == Task::Synth;
    let rows = read_jsonl::<GsmRow>(file, |r| {
        if !r.answer.contains("####") {
            return Err("answer has no `#### <number>` line".into());
        }
        if synth && r.steps.is_none() {
            return Err("synth row has no `steps`".into());
        }
        Ok(())
    })?;
    let (prompt, stop): (fn(&str) -> String, Vec<String>) = match task {
        Task::Gsm8k => (gsm8k_cot_prompt, GSM8K_COT_STOP.map(String::from).to_vec()),
        _ => (gsm8k_rr_prompt, vec![GSM8K_STOP.to_string()]),
    };
    Ok(rows
        .into_iter()
        .enumerate()
        .map(|(i, (_, r))| GenRequest {
            id: format!("{}/{i}", task.name()),
            prompt: prompt(&r.question),
            // The harness's doc_to_target: answer.split('####')[-1].strip().
            reference: r
                .answer
                .rsplit("####")
                .next()
                .unwrap_or("")
                .trim()
                .to_string(),
            stop: stop.clone(),
            difficulty: if synth { r.steps } else { None },
            subject: None,
        })
        .collect())
}

#[derive(Deserialize)]
struct MathRow {
    problem: String,
    solution: String,
    /// MATH's subject.
    #[serde(default, rename = "type")]
    kind: Option<String>,
    /// MATH500's subject.
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    unique_id: Option<String>,
}

pub(super) fn math_requests(task: Task, file: &Path) -> Result<Vec<GenRequest>> {
    let rows = read_jsonl::<MathRow>(file, |r| {
        if r.kind.is_none() && r.subject.is_none() {
            return Err("row has neither `type` nor `subject`".into());
        }
        match last_boxed(&r.solution) {
            Some(_) => Ok(()),
            None => Err("solution has no \\boxed{} answer".into()),
        }
    })?;
    Ok(rows
        .into_iter()
        .enumerate()
        .map(|(i, (_, r))| GenRequest {
            id: r
                .unique_id
                .unwrap_or_else(|| format!("{}/{i}", task.name())),
            prompt: math_prompt(&r.problem),
            reference: last_boxed(&r.solution).expect("checked"),
            stop: vec![MATH_STOP.to_string()],
            difficulty: None,
            subject: r.kind.or(r.subject),
        })
        .collect())
}
