//! How input files become documents: the formats `rr data pack` reads and the document
//! template of each (recorded in the manifest).

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// How the input files are read into documents (see the module docs for the templates).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    Text,
    Jsonl,
    Gsm8k,
    /// GSM8K records as the `gsm8k_rr` / `synth` evaluation prompts continue them.
    #[serde(rename = "gsm8k-rr")]
    Gsm8kRr,
    Math,
}

impl InputFormat {
    /// The document template, in words (also written to the manifest).
    pub fn template(self) -> &'static str {
        match self {
            InputFormat::Text => "blank-line-separated paragraphs; lines joined with \\n",
            InputFormat::Jsonl => "{text}",
            InputFormat::Gsm8k => {
                "Q: {question}\\n\\nA: {answer} (fields trimmed, <<calculator>> annotations removed)"
            }
            InputFormat::Gsm8kRr => {
                "Q: {question}\\n\\nA: Let's think step by step. {answer} (fields trimmed, \
                 <<calculator>> annotations removed)"
            }
            InputFormat::Math => "Problem:\\n{problem}\\n\\nSolution: {solution} (fields trimmed)",
        }
    }

    /// The document of one JSONL record (`Text` has no records: always `Err`).
    /// `Err` is a message without location.
    pub fn render_record(self, record: &serde_json::Value) -> std::result::Result<String, String> {
        let field = |name: &str| -> std::result::Result<&str, String> {
            if !record.is_object() {
                return Err("expected a JSON object".into());
            }
            match record.get(name) {
                Some(serde_json::Value::String(s)) => Ok(s.as_str()),
                Some(_) => Err(format!("field \"{name}\" is not a string")),
                None => Err(format!("missing string field \"{name}\"")),
            }
        };
        match self {
            InputFormat::Text => Err("text input has no JSON records".into()),
            InputFormat::Jsonl => Ok(field("text")?.to_string()),
            InputFormat::Gsm8k => Ok(gsm8k_document(field("question")?, field("answer")?)),
            InputFormat::Gsm8kRr => Ok(gsm8k_rr_document(field("question")?, field("answer")?)),
            InputFormat::Math => Ok(math_document(field("problem")?, field("solution")?)),
        }
    }
}

impl fmt::Display for InputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InputFormat::Text => "text",
            InputFormat::Jsonl => "jsonl",
            InputFormat::Gsm8k => "gsm8k",
            InputFormat::Gsm8kRr => "gsm8k-rr",
            InputFormat::Math => "math",
        })
    }
}

impl FromStr for InputFormat {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "text" | "txt" => Ok(InputFormat::Text),
            "jsonl" => Ok(InputFormat::Jsonl),
            "gsm8k" => Ok(InputFormat::Gsm8k),
            "gsm8k-rr" => Ok(InputFormat::Gsm8kRr),
            "math" => Ok(InputFormat::Math),
            _ => {
                bail!("unknown input format {s:?} (expected text, jsonl, gsm8k, gsm8k-rr or math)")
            }
        }
    }
}

/// The GSM8K document: `Q: {question}\n\nA: {answer}`, calculator annotations removed.
pub fn gsm8k_document(question: &str, answer: &str) -> String {
    format!(
        "Q: {}\n\nA: {}",
        question.trim(),
        strip_calculator_annotations(answer.trim())
    )
}

/// The GSM8K document as rr's `gsm8k_rr` and `synth` evaluation prompts continue it:
/// `Q: {question}\n\nA: Let's think step by step. {answer}`, calculator annotations removed.
/// A model trained on these documents meets, at evaluation, the prompt it was trained to
/// continue (the plain `gsm8k` document lacks the `Let's think step by step.` the prompt
/// ends with, and a small model then writes the question again instead of answering).
pub fn gsm8k_rr_document(question: &str, answer: &str) -> String {
    format!(
        "Q: {}\n\nA: Let's think step by step. {}",
        question.trim(),
        strip_calculator_annotations(answer.trim())
    )
}

/// The MATH document: `Problem:\n{problem}\n\nSolution: {solution}`.
pub fn math_document(problem: &str, solution: &str) -> String {
    format!(
        "Problem:\n{}\n\nSolution: {}",
        problem.trim(),
        solution.trim()
    )
}

/// Removes GSM8K's `<<expr=value>>` annotations (an unclosed `<<` is kept as is).
pub fn strip_calculator_annotations(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<<") {
        match rest[start + 2..].find(">>") {
            Some(len) => {
                out.push_str(&rest[..start]);
                rest = &rest[start + 2 + len + 2..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out
}
