//! Generative tasks: GSM8K (and synth, same format) and MATH500.
//!
//! GSM8K prompt (method spec §6, 1-shot chain of thought):
//!
//! ```text
//! Q: {exemplar question}\n\nA: Let's think step by step. {exemplar answer}\n\n
//! Q: {question}\n\nA: Let's think step by step.
//! ```
//!
//! The exemplar is GSM8K **train row 1** (Natalia's clips, `gsm8k/train.jsonl` line 1) with its
//! calculator annotations `<<48/2=24>>` removed (they are training-data artefacts, not text a
//! model should imitate); its answer keeps the final `#### 72` line. Stop at `Q:`.
//!
//! MATH500 prompt: the harness's `minerva_math` prompt cut to its first exemplar (1-shot):
//! `Problem:\n{p}\n\nSolution:\n{solution … Final Answer: The final answer is $[2,5)$. I hope it
//! is correct.}\n\nProblem:\n{problem}\n\nSolution:` (exemplar text verbatim, including the
//! original's stray `}`). Stop at `Problem:`. Extraction: `metrics::extract_math_answer`.
//!
//! synth: the project's synthetic problems (`{"question", "answer", "steps"}`), prompted and
//! scored exactly as GSM8K; `difficulty` = `steps`.

use std::path::Path;

use anyhow::Result;
use serde::Deserialize;

use super::{read_jsonl, GenRequest, Task};

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

/// The 1-shot GSM8K chain-of-thought prompt for `question`.
pub fn gsm8k_prompt(question: &str) -> String {
    format!(
        "Q: {GSM8K_EXEMPLAR_QUESTION}\n\nA: Let's think step by step. {GSM8K_EXEMPLAR_ANSWER}\n\n\
         Q: {question}\n\nA: Let's think step by step."
    )
}

/// The 1-shot Minerva MATH prompt for `problem`.
pub fn math_prompt(problem: &str) -> String {
    format!(
        "Problem:\n{MATH_EXEMPLAR_PROBLEM}\n\nSolution:\n{MATH_EXEMPLAR_SOLUTION}\n\n\
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
    Ok(rows
        .into_iter()
        .enumerate()
        .map(|(i, (_, r))| GenRequest {
            id: format!("{}/{i}", task.name()),
            prompt: gsm8k_prompt(&r.question),
            // Harness: answer.split('### ')[-1].rstrip(); we take the text after the last "####".
            reference: r
                .answer
                .rsplit("####")
                .next()
                .unwrap_or("")
                .trim()
                .to_string(),
            stop: vec![GSM8K_STOP.to_string()],
            difficulty: if synth { r.steps } else { None },
        })
        .collect())
}

#[derive(Deserialize)]
struct MathRow {
    problem: String,
    answer: String,
    #[serde(default)]
    unique_id: Option<String>,
}

pub(super) fn math_requests(file: &Path) -> Result<Vec<GenRequest>> {
    let rows = read_jsonl::<MathRow>(file, |_| Ok(()))?;
    Ok(rows
        .into_iter()
        .enumerate()
        .map(|(i, (_, r))| GenRequest {
            id: r.unique_id.unwrap_or_else(|| format!("math500/{i}")),
            prompt: math_prompt(&r.problem),
            reference: r.answer,
            stop: vec![MATH_STOP.to_string()],
            difficulty: None,
        })
        .collect())
}
