//! Synthetic multi-step arithmetic word problems in GSM8K style, for curricula by difficulty.
//!
//! A problem follows one person's count of one kind of object through `steps` operations, each a
//! single integer step: buy / find / receive (`+`), give / lose / sell (`-`), doubling and the
//! like (`*`, factor 2–4) and sharing into equal groups (`/`, always exact). Counts never go
//! below 1 and stay below 10,000. Difficulty (`steps`) is uniform over `1..=max_steps`.
//!
//! ```text
//! question: Mia has 7 shells. She finds 5 more shells. Then the number of shells she has triples.
//!           How many shells does Mia have now?
//! answer:   Mia has 7 shells and finds 5 more, so she has 7 + 5 = 12 shells.
//!           Mia has 12 shells and the number triples, so she has 12 * 3 = 36 shells.
//!           #### 36
//! ```
//!
//! Problem `i` of a seed depends only on `(seed, i)`, so `synth_math(n, k, s)` is a prefix of
//! `synth_math(n + m, k, s)`. [`verify`] re-evaluates every step of the answer.

use std::path::Path;

use anyhow::{Context, Result};
use rr_util::seed::{self as rng, SplitMix64};
use serde::{Deserialize, Serialize};

const SYNTH_TAG: u64 = 0x7379_6e74_686d_6174; // "synthmat"
/// Multiplication only while the product stays at most this.
const MAX_MUL_RESULT: i64 = 1_000;

/// One generated problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynthProblem {
    pub question: String,
    /// One line per step (`... a op b = c ...`), then `#### <final_answer>`.
    pub answer: String,
    /// Difficulty: the number of arithmetic steps.
    pub steps: usize,
    pub final_answer: i64,
}

struct Person {
    name: &'static str,
    subject: &'static str,
    object: &'static str,
    possessive: &'static str,
}

const fn he(name: &'static str) -> Person {
    Person {
        name,
        subject: "he",
        object: "him",
        possessive: "his",
    }
}

const fn she(name: &'static str) -> Person {
    Person {
        name,
        subject: "she",
        object: "her",
        possessive: "her",
    }
}

const PEOPLE: [Person; 16] = [
    he("Tom"),
    she("Anna"),
    he("Liam"),
    she("Mia"),
    he("Noah"),
    she("Emma"),
    he("Lucas"),
    she("Sofia"),
    he("Ben"),
    she("Olivia"),
    he("Jack"),
    she("Ava"),
    he("Leo"),
    she("Zoe"),
    he("Omar"),
    she("Lily"),
];

/// (singular, plural)
const OBJECTS: [(&str, &str); 14] = [
    ("apple", "apples"),
    ("marble", "marbles"),
    ("sticker", "stickers"),
    ("book", "books"),
    ("pencil", "pencils"),
    ("cookie", "cookies"),
    ("shell", "shells"),
    ("card", "cards"),
    ("coin", "coins"),
    ("balloon", "balloons"),
    ("toy car", "toy cars"),
    ("stamp", "stamps"),
    ("crayon", "crayons"),
    ("orange", "oranges"),
];

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn noun(n: i64, (one, many): (&'static str, &'static str)) -> &'static str {
    if n == 1 {
        one
    } else {
        many
    }
}

fn count(n: i64, obj: (&'static str, &'static str)) -> String {
    format!("{n} {}", noun(n, obj))
}

/// One step of a problem: the operation and its operand.
#[derive(Clone, Copy)]
enum Op {
    Add(i64),
    Sub(i64),
    Mul(i64),
    Div(i64),
}

impl Op {
    /// A random step from the count `x`: its kind uniformly among those that fit (`+` always,
    /// `-` from 2 on, `*` while `4·x` stays at most [`MAX_MUL_RESULT`], `/` when a divisor in
    /// 2..=6 divides `x`), then its operand.
    fn draw(rng: &mut SplitMix64, x: i64) -> Self {
        let divisors: Vec<i64> = (2..=6).filter(|d| x % d == 0).collect();
        let mut kinds = vec![0u8];
        if x >= 2 {
            kinds.push(1);
        }
        if x * 4 <= MAX_MUL_RESULT {
            kinds.push(2);
        }
        if !divisors.is_empty() {
            kinds.push(3);
        }
        match *rng.pick(&kinds) {
            0 => Op::Add(rng.range(1, 20) as i64),
            1 => Op::Sub(rng.range(1, (x - 1) as u64) as i64),
            2 => Op::Mul(rng.range(2, 4) as i64),
            _ => Op::Div(*rng.pick(&divisors)),
        }
    }

    /// The operation's symbol and operand, as the answer writes them.
    fn parts(self) -> (char, i64) {
        match self {
            Op::Add(k) => ('+', k),
            Op::Sub(k) => ('-', k),
            Op::Mul(m) => ('*', m),
            Op::Div(d) => ('/', d),
        }
    }

    fn apply(self, x: i64) -> i64 {
        match self {
            Op::Add(k) => x + k,
            Op::Sub(k) => x - k,
            Op::Mul(m) => x * m,
            Op::Div(d) => x / d,
        }
    }
}

/// Who and what a problem is about.
struct Story {
    person: &'static Person,
    /// Someone else, who gives or receives.
    other: &'static Person,
    object: (&'static str, &'static str),
}

impl Story {
    fn draw(rng: &mut SplitMix64) -> Self {
        let person = rng.pick(&PEOPLE);
        let other = loop {
            let o = rng.pick(&PEOPLE);
            if o.name != person.name {
                break o;
            }
        };
        let object = *rng.pick(&OBJECTS);
        Self {
            person,
            other,
            object,
        }
    }

    /// The question's sentence for `op` and the answer's phrase for it (`how`), in wording
    /// `variant` (0, 1 or 2); `then` starts the sentence with "Then".
    fn sentence(&self, op: Op, then: bool, variant: u64) -> (String, String) {
        let p = self.person.subject;
        let subject = if then {
            format!("Then {p}")
        } else {
            capitalize(p)
        };
        match op {
            Op::Add(k) => self.add_sentence(&subject, k, variant),
            Op::Sub(k) => self.sub_sentence(&subject, k, variant),
            Op::Mul(m) => self.mul_sentence(&subject, then, m, variant),
            Op::Div(d) => self.div_sentence(&subject, d, variant),
        }
    }

    fn add_sentence(&self, subject: &str, k: i64, variant: u64) -> (String, String) {
        let (obj, other, him) = (self.object, self.other.name, self.person.object);
        match variant {
            0 => (
                format!("{subject} buys {k} more {}.", noun(k, obj)),
                format!("buys {k} more"),
            ),
            1 => (
                format!("{subject} finds {k} more {}.", noun(k, obj)),
                format!("finds {k} more"),
            ),
            _ => (
                format!("{other} gives {him} {}.", count(k, obj)),
                format!("gets {k} more from {other}"),
            ),
        }
    }

    fn sub_sentence(&self, subject: &str, k: i64, variant: u64) -> (String, String) {
        let (obj, other) = (self.object, self.other.name);
        match variant {
            0 => (
                format!("{subject} gives {} to {other}.", count(k, obj)),
                format!("gives {k} to {other}"),
            ),
            1 => (
                format!("{subject} loses {}.", count(k, obj)),
                format!("loses {k}"),
            ),
            _ => (
                format!("{subject} sells {}.", count(k, obj)),
                format!("sells {k}"),
            ),
        }
    }

    fn mul_sentence(&self, subject: &str, then: bool, m: i64, variant: u64) -> (String, String) {
        let (p, plural) = (self.person.subject, self.object.1);
        let the = if then { "Then the" } else { "The" };
        let verb = ["doubles", "triples", "quadruples"][(m - 2) as usize];
        match variant {
            0 => (
                format!("{the} number of {plural} {p} has {verb}."),
                format!("the number {verb}"),
            ),
            _ => (
                format!("{subject} ends up with {m} times as many {plural} as before."),
                format!("ends up with {m} times as many"),
            ),
        }
    }

    fn div_sentence(&self, subject: &str, d: i64, variant: u64) -> (String, String) {
        let (p, his, plural) = (self.person.subject, self.person.possessive, self.object.1);
        match variant {
            0 => (
                format!("{subject} splits {his} {plural} into {d} equal piles and keeps one pile."),
                format!("splits them into {d} equal piles and keeps one"),
            ),
            _ => (
                format!(
                    "{subject} shares {his} {plural} equally with {}, so that everyone, {p} included, gets the same number.",
                    if d == 2 { "1 friend".to_string() } else { format!("{} friends", d - 1) }
                ),
                format!("shares them equally among {d} people"),
            ),
        }
    }

    /// The answer's line for one step from `x` to `y`.
    fn answer_line(&self, op: Op, x: i64, y: i64, how: &str) -> String {
        let (name, p, obj) = (self.person.name, self.person.subject, self.object);
        let (symbol, operand) = op.parts();
        let left = if matches!(op, Op::Sub(_)) {
            " left"
        } else {
            ""
        };
        format!(
            "{name} has {} and {how}, so {p} has {x} {symbol} {operand} = {}{left}.",
            count(x, obj),
            count(y, obj)
        )
    }
}

/// `n` problems with `1..=max_steps` steps each (`max_steps` 0 is taken as 1).
/// The most problems one call makes (about 300 MB of JSONL) and the most steps per problem.
pub const MAX_PROBLEMS: usize = 1_000_000;
pub const MAX_STEPS: usize = 64;

/// Refuses a request beyond [`MAX_PROBLEMS`] or [`MAX_STEPS`] before any work.
pub fn check_synth_request(problems: usize, max_steps: usize) -> anyhow::Result<()> {
    if problems > MAX_PROBLEMS {
        anyhow::bail!("--problems {problems} is beyond the supported {MAX_PROBLEMS}");
    }
    if !(1..=MAX_STEPS).contains(&max_steps) {
        anyhow::bail!("--max-steps {max_steps} must be between 1 and {MAX_STEPS}");
    }
    Ok(())
}

pub fn synth_math(problems: usize, max_steps: usize, seed: u64) -> Vec<SynthProblem> {
    let max_steps = max_steps.max(1);
    (0..problems as u64)
        .map(|i| {
            generate(
                &mut SplitMix64::new(rng::hash(&[seed, SYNTH_TAG, i])),
                max_steps,
            )
        })
        .collect()
}

/// One problem: difficulty, story and starting count, then each step's operation, whether
/// its sentence starts with "Then" (never the first) and its wording, drawn in that order.
fn generate(rng: &mut SplitMix64, max_steps: usize) -> SynthProblem {
    let steps = rng.range(1, max_steps as u64) as usize;
    let story = Story::draw(rng);
    let (name, plural) = (story.person.name, story.object.1);
    let mut x = rng.range(2, 20) as i64;
    let mut question = format!("{name} has {}.", count(x, story.object));
    let mut answer = String::new();
    for step in 0..steps {
        let op = Op::draw(rng, x);
        let then = step > 0 && rng.below(2) == 0;
        let variant = rng.below(3);
        let (sentence, how) = story.sentence(op, then, variant);
        let y = op.apply(x);
        question.push(' ');
        question.push_str(&sentence);
        answer.push_str(&story.answer_line(op, x, y, &how));
        answer.push('\n');
        x = y;
    }
    question.push_str(&format!(" How many {plural} does {name} have now?"));
    answer.push_str(&format!("#### {x}"));
    SynthProblem {
        question,
        answer,
        steps,
        final_answer: x,
    }
}

/// One `a op b = c` equation in a line, if there is exactly one.
fn equation(line: &str) -> Option<(i64, char, i64, i64)> {
    let words: Vec<&str> = line
        .split_whitespace()
        .map(|w| w.trim_end_matches(['.', ',', ';', ':']))
        .collect();
    let int = |s: &str| -> Option<i64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let mut found = None;
    for w in words.windows(5) {
        let (Some(a), Some(b), Some(c)) = (int(w[0]), int(w[2]), int(w[4])) else {
            continue;
        };
        if w[3] != "=" || w[1].chars().count() != 1 {
            continue;
        }
        let op = w[1].chars().next()?;
        if !"+-*/".contains(op) {
            continue;
        }
        if found.is_some() {
            return None;
        }
        found = Some((a, op, b, c));
    }
    found
}

/// Re-evaluates a problem's answer: exactly `steps` equation lines, each correct, chained (each
/// starts from the previous result, the first from the count in the question's first sentence),
/// no negative count, exact divisions, and a last line `#### <final_answer>` equal to the last
/// result.
pub fn verify(problem: &SynthProblem) -> bool {
    let lines: Vec<&str> = problem.answer.lines().collect();
    let Some((last, steps)) = lines.split_last() else {
        return false;
    };
    if *last != format!("#### {}", problem.final_answer)
        || steps.len() != problem.steps
        || steps.is_empty()
    {
        return false;
    }
    let first_sentence = problem.question.split('.').next().unwrap_or("");
    let Some(mut value) = first_sentence
        .split_whitespace()
        .find_map(|w| w.parse::<i64>().ok())
    else {
        return false;
    };
    for line in steps {
        let Some((a, op, b, c)) = equation(line) else {
            return false;
        };
        if a != value {
            return false;
        }
        let expected = match op {
            '+' => a.checked_add(b),
            '-' => a.checked_sub(b),
            '*' => a.checked_mul(b),
            '/' => (b != 0 && a % b == 0).then(|| a / b),
            _ => None,
        };
        match expected {
            Some(e) if e == c && c >= 0 => value = c,
            _ => return false,
        }
    }
    value == problem.final_answer
}

#[derive(Serialize)]
struct Record<'a> {
    question: &'a str,
    answer: &'a str,
    steps: usize,
}

/// Writes `problems` as JSONL (`{"question", "answer", "steps"}` per line, the GSM8K schema plus
/// `steps`), atomically: a temporary sibling renamed into place; an existing `path` is refused.
pub fn write_synth_math(path: &Path, problems: &[SynthProblem]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create directory", parent.display()))?;
    }
    rr_util::fs::write_new_atomic_with(path, |w| {
        for p in problems {
            serde_json::to_writer(
                &mut *w,
                &Record {
                    question: &p.question,
                    answer: &p.answer,
                    steps: p.steps,
                },
            )
            .map_err(std::io::Error::from)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equation_parsing() {
        assert_eq!(
            equation("so he has 3 + 5 = 8 apples."),
            Some((3, '+', 5, 8))
        );
        assert_eq!(equation("no equation here"), None);
        assert_eq!(equation("1 + 1 = 2 and 2 + 2 = 4"), None);
    }
}
