//! Scoring: GSM8K answer extraction, MATH answer equivalence, multiple-choice accuracy, and the
//! mean / standard error aggregation — each a faithful port of the reference implementation
//! named in its section, so numbers are comparable with lm-evaluation-harness.
//!
//! # GSM8K (lm-evaluation-harness `gsm8k-cot` / `gsm8k` filters and metric)
//!
//! * strict-match, task `gsm8k` (the harness's `gsm8k-cot`): the **first** match of
//!   `The answer is (\-?[0-9\.\,]+).`, group 1, stripped. The final `.` is any character, so
//!   `The answer is 6` at the very end does not match and `The answer is 62` yields `6` — as in
//!   the harness. Tasks `gsm8k_rr` / `synth` (the harness's plain `gsm8k`): `#### (\-?[0-9\.\,]+)`.
//! * flexible-extract: the **last** match of `(-?[$0-9.,]{2,})|(-?[0-9]+)`, taking the non-empty
//!   group (harness `RegexFilter` with `group_select: -1`), stripped.
//! * no match → `"[invalid]"` (the harness's fallback, which never equals a number).
//! * comparison (`exact_match` with `regexes_to_ignore: [",", "\$", "(?s).*#### ", "\.$"]`,
//!   `ignore_case: true`): each regex is removed from prediction and reference in that order
//!   (`re.sub`, all occurrences; `\.$` therefore removes a single trailing period), then both are
//!   lower-cased and compared. Because `(?s).*#### ` is one of the removed patterns, a full
//!   dataset answer ("…\n#### 18") normalises to its final number, so either the full answer or
//!   the bare number can be passed as the reference.
//!
//! # MATH (lm-evaluation-harness `minerva_math`)
//!
//! `exact_match`: the answer is the harness's `get_unnormalized_answer` (the text of `Final
//! Answer: The final answer is(.*?). I hope it is correct.` searched in the generation with
//! `I hope it is correct.` appended, stripped; `"[invalidanswer]"` when absent — no `\boxed{}`
//! fallback, as in the harness), the reference the content of the solution's last `\boxed{}`;
//! both go through [`normalize_final_answer`] (Minerva's, appendix D of Lewkowycz et al.). The
//! harness then calls them equal when sympy's `simplify(parse_latex(a) - parse_latex(b)) == 0`;
//! rr calls them equal when the strings are equal or [`crate::math_verify::equivalent`] says so
//! (no sympy here: the two differ where sympy cannot parse an answer, e.g. an interval, which
//! the harness then scores 0 even when it is right).
//!
//! `math_verify`: [`crate::math_verify::math_verify`] — the symbolic-equivalence score the
//! authors plot (the harness calls the `math_verify` package on the full generation and the
//! full solution).
//!
//! # Hendrycks et al. `math_equivalence.py` (`is_equiv` / `strip_string`, kept as [`math_equal`])
//!
//! [`math_equal`] is Hendrycks' `is_equiv`: both strings go through `strip_string` and are
//! compared as strings; if normalisation raises in the Python original (e.g. `\sqrt` at the end
//! of the string, two `\text{ ` units), the raw strings are compared instead. `strip_string`:
//! drop newlines, `\!`; `\\`→`\`; `tfrac`/`dfrac`→`frac`; drop `\left`, `\right`, `^{\circ}`,
//! `^\circ`, `\$`; cut units from the first `\text{ ` on; drop `\%`; ` .`→` 0.`, `{.`→`{0.`, a
//! leading `.` gets a `0`; `k = …` (left side at most 2 characters) keeps only the right side;
//! `\sqrt3`→`\sqrt{3}`; drop spaces; `\frac12`→`\frac{1}{2}`, `\frac1b`→`\frac{1}{b}`;
//! exactly `0.5`→`\frac{1}{2}`; integer `a/b`→`\frac{a}{b}`.
//!
//! Two documented additions run first, on both sides ([`math_prenormalize`]): trim, unwrap one
//! enclosing `$…$` (or `\(...\)`), unwrap a whole-string `\boxed{…}`, and drop trailing periods —
//! Hendrycks' data never needs these, but generations ("$5$.") do.
//!
//! # Multiple choice (lm-evaluation-harness `ConfigurableTask.process_results`)
//!
//! `acc`: argmax of the summed log-likelihood of each choice's continuation; `acc_norm`: argmax of
//! that sum divided by the choice's length. numpy's argmax: ties → the first index; NaN wins
//! (numpy treats NaN as maximal). The harness's length is `len(choice)` in Python characters of
//! the choice text *without* the target delimiter (see `McItem::norm_lengths` in `tasks`); the
//! method spec says bytes — identical for ASCII text.
//!
//! # Aggregation (lm-evaluation-harness `mean`, `mean_stderr`)
//!
//! mean, and `sample_stddev / sqrt(n)` with the `n − 1` denominator; `NaN` for `n < 2`
//! (written as `"N/A"` by `results`, as the harness does).

use std::sync::OnceLock;

use regex::Regex;

fn re(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("valid built-in regex"))
}

/// The harness's fallback when a GSM8K filter finds nothing.
pub const GSM8K_INVALID: &str = "[invalid]";
/// GSM8K flexible-extract regex (the last match is used).
pub const GSM8K_FLEXIBLE_RE: &str = r"(-?[$0-9.,]{2,})|(-?[0-9]+)";

/// Which strict-match filter a GSM8K-format task uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gsm8kStrict {
    /// `gsm8k-cot`: `The answer is (\-?[0-9\.\,]+).` (task `gsm8k`).
    AnswerIs,
    /// plain `gsm8k`: `#### (\-?[0-9\.\,]+)` (tasks `gsm8k_rr`, `synth`).
    Hashes,
}

impl Gsm8kStrict {
    pub fn pattern(self) -> &'static str {
        match self {
            Gsm8kStrict::AnswerIs => r"The answer is (\-?[0-9\.\,]+).",
            Gsm8kStrict::Hashes => r"#### (\-?[0-9\.\,]+)",
        }
    }

    fn regex(self) -> &'static Regex {
        static ANSWER_IS: OnceLock<Regex> = OnceLock::new();
        static HASHES: OnceLock<Regex> = OnceLock::new();
        match self {
            Gsm8kStrict::AnswerIs => re(&ANSWER_IS, self.pattern()),
            Gsm8kStrict::Hashes => re(&HASHES, self.pattern()),
        }
    }
}

fn flexible_re() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(&R, GSM8K_FLEXIBLE_RE)
}

/// First match of the strict regex, group 1, stripped; `"[invalid]"` if there is none.
pub fn extract_strict(generation: &str, strict: Gsm8kStrict) -> String {
    strict
        .regex()
        .captures(generation)
        .and_then(|c| c.get(1))
        .map_or_else(
            || GSM8K_INVALID.to_string(),
            |m| m.as_str().trim().to_string(),
        )
}

/// Last match of `(-?[$0-9.,]{2,})|(-?[0-9]+)`, the non-empty group, stripped; `"[invalid]"`
/// if there is none.
pub fn extract_flexible(generation: &str) -> String {
    flexible_re()
        .captures_iter(generation)
        .last()
        .and_then(|caps| caps.get(1).or_else(|| caps.get(2)))
        .map_or_else(
            || GSM8K_INVALID.to_string(),
            |m| m.as_str().trim().to_string(),
        )
}

/// The harness's GSM8K `exact_match` normalisation (see the module docs).
pub fn normalize_number(s: &str) -> String {
    static HASHES: OnceLock<Regex> = OnceLock::new();
    static TRAILING_DOT: OnceLock<Regex> = OnceLock::new();
    let s = s.replace([',', '$'], "");
    let s = re(&HASHES, r"(?s).*#### ").replace_all(&s, "").into_owned();
    // Python's `$` also matches before a final "\n"; `\.(\n?)\z` keeps that newline like re.sub.
    let s = re(&TRAILING_DOT, r"\.(\n?)\z")
        .replace(&s, "$1")
        .into_owned();
    s.to_lowercase()
}

/// `(strict, flexible)` correctness of a generation against a GSM8K reference (the text after
/// `####`, or the whole dataset answer).
pub fn gsm8k_correct(
    generation: &str,
    reference_answer: &str,
    strict: Gsm8kStrict,
) -> (bool, bool) {
    let reference = normalize_number(reference_answer);
    let check = |x: String| normalize_number(&x) == reference;
    (
        check(extract_strict(generation, strict)),
        check(extract_flexible(generation)),
    )
}

// ---------------------------------------------------------------------------------------------
// MATH: Minerva (minerva_math)

/// The harness's fallback when a MATH generation has no final-answer line.
pub const MATH_INVALID: &str = "[invalidanswer]";

/// The harness's `get_unnormalized_answer`: the final-answer line's answer, or
/// `"[invalidanswer]"`.
pub fn minerva_unnormalized_answer(generation: &str) -> String {
    static R: OnceLock<Regex> = OnceLock::new();
    let text = format!("{generation}I hope it is correct.");
    re(
        &R,
        r"Final Answer: The final answer is(.*?). I hope it is correct.",
    )
    .captures(&text)
    .map_or_else(|| MATH_INVALID.to_string(), |c| c[1].trim().to_string())
}

/// Minerva's substitutions, in order.
const MINERVA_SUBSTITUTIONS: [(&str, &str); 10] = [
    ("an ", ""),
    ("a ", ""),
    (".$", "$"),
    ("\\$", ""),
    ("\\ ", ""),
    (" ", ""),
    ("mbox", "text"),
    (",\\text{and}", ","),
    ("\\text{and}", ","),
    ("\\text{m}", "\\text{}"),
];

/// Minerva's removed expressions, in order.
const MINERVA_REMOVED: [&str; 42] = [
    "square",
    "ways",
    "integers",
    "dollars",
    "mph",
    "inches",
    "ft",
    "hours",
    "km",
    "units",
    "\\ldots",
    "sue",
    "points",
    "feet",
    "minutes",
    "digits",
    "cents",
    "degrees",
    "cm",
    "gm",
    "pounds",
    "meters",
    "meals",
    "edges",
    "students",
    "childrentickets",
    "multiples",
    "\\text{s}",
    "\\text{.}",
    "\\text{\ns}",
    "\\text{}^2",
    "\\text{}^3",
    "\\text{\n}",
    "\\text{}",
    "\\mathrm{th}",
    "^\\circ",
    "^{\\circ}",
    "\\;",
    ",\\!",
    "{,}",
    "\"",
    "\\dots",
];

/// Minerva's `normalize_final_answer` (the harness's `minerva_math` utils).
pub fn normalize_final_answer(final_answer: &str) -> String {
    static MATH: OnceLock<Regex> = OnceLock::new();
    static TEXT: OnceLock<Regex> = OnceLock::new();
    static TEXTBF: OnceLock<Regex> = OnceLock::new();
    static OVERLINE: OnceLock<Regex> = OnceLock::new();
    static BOXED: OnceLock<Regex> = OnceLock::new();
    static FRAC: OnceLock<Regex> = OnceLock::new();
    static SQRT: OnceLock<Regex> = OnceLock::new();
    let mut s = final_answer.rsplit('=').next().unwrap_or("").to_string();
    for (before, after) in MINERVA_SUBSTITUTIONS {
        s = s.replace(before, after);
    }
    for expr in MINERVA_REMOVED {
        s = s.replace(expr, "");
    }
    let subs: [(&OnceLock<Regex>, &str, &str); 7] = [
        (&MATH, r"(.*?)(\$)(.*?)(\$)(.*)", "$$${3}$$"),
        (&TEXT, r"(\\text\{)(.*?)(\})", "${2}"),
        (&TEXTBF, r"(\\textbf\{)(.*?)(\})", "${2}"),
        (&OVERLINE, r"(\\overline\{)(.*?)(\})", "${2}"),
        (&BOXED, r"(\\boxed\{)(.*)(\})", "${2}"),
        (&FRAC, r"(frac)([^{])(.)", "frac{${2}}{${3}}"),
        (&SQRT, r"(sqrt)([^{])", "sqrt{${2}}"),
    ];
    for (cell, pattern, replacement) in subs {
        s = re(cell, pattern).replace_all(&s, replacement).into_owned();
    }
    s = s.replace('$', "");
    let digits = s.replace(',', "");
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        s = digits;
    }
    s
}

/// The harness's `minerva_math` `exact_match` of a generation against the reference box
/// content (module docs: sympy's equivalence replaced by string equality or
/// [`crate::math_verify::equivalent`]).
pub fn minerva_exact_match(generation: &str, reference: &str) -> bool {
    let answer = normalize_final_answer(&minerva_unnormalized_answer(generation));
    let reference = normalize_final_answer(reference);
    answer == reference
        || (answer != MATH_INVALID && crate::math_verify::equivalent(&answer, &reference))
}

// ---------------------------------------------------------------------------------------------
// MATH: boxes, final-answer lines, Hendrycks' normaliser

/// Contents of the last `\boxed{…}` / `\fbox{…}` (balanced braces), or of `\boxed x` (up to the
/// next `$`, as in the harness's `last_boxed_only_string`). `None` when absent or unbalanced.
pub fn last_boxed(s: &str) -> Option<String> {
    if let Some(pos) = s.rfind("\\boxed ") {
        // Harness: "\\boxed " + string.split("\\boxed ")[-1].split("$")[0]
        let rest = &s[pos + "\\boxed ".len()..];
        let boxed_pos = s.rfind("\\boxed").unwrap_or(pos);
        if boxed_pos == pos {
            return Some(rest.split('$').next().unwrap_or("").to_string());
        }
    }
    let idx = s.rfind("\\boxed").or_else(|| s.rfind("\\fbox"))?;
    let mut depth = 0i64;
    let mut open = None;
    for (i, c) in s[idx..].char_indices() {
        match c {
            '{' => {
                if open.is_none() {
                    open = Some(idx + i + 1);
                }
                depth += 1;
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return open.map(|o| s[o..idx + i].to_string());
                }
            }
            _ => {}
        }
    }
    None
}

/// Minerva's final-answer line: `Final Answer: The final answer is(.*?). I hope it is correct.`
/// searched in `generation + "I hope it is correct."`, as the harness's `get_unnormalized_answer`.
pub fn extract_minerva_final_answer(generation: &str) -> Option<String> {
    static R: OnceLock<Regex> = OnceLock::new();
    let text = format!("{generation}I hope it is correct.");
    re(
        &R,
        r"Final Answer: The final answer is(.*?). I hope it is correct.",
    )
    .captures(&text)
    .map(|c| c[1].trim().to_string())
    .filter(|s| !s.is_empty())
}

/// The answer of a MATH generation: the Minerva "Final Answer: The final answer is …" line if
/// present, else the last `\boxed{}`, else a looser "the final answer is …" (rest of the line,
/// trailing period dropped). Pass the result and the reference to [`math_equal`].
pub fn extract_math_answer(generation: &str) -> Option<String> {
    static LOOSE: OnceLock<Regex> = OnceLock::new();
    if let Some(a) = extract_minerva_final_answer(generation) {
        return Some(a);
    }
    if let Some(a) = last_boxed(generation) {
        return Some(a);
    }
    re(&LOOSE, r"(?i)the final answer is:?\s*([^\n]+)")
        .captures_iter(generation)
        .last()
        .map(|c| c[1].trim().trim_end_matches('.').trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Additions run before Hendrycks' `strip_string` (see the module docs).
pub fn math_prenormalize(s: &str) -> String {
    let mut s = s.trim().to_string();
    loop {
        let before = s.clone();
        s = s.trim().trim_end_matches('.').trim().to_string();
        if s.len() >= 2 && s.starts_with('$') && s.ends_with('$') {
            s = s[1..s.len() - 1].to_string();
        } else if s.starts_with("\\(") && s.ends_with("\\)") && s.len() >= 4 {
            s = s[2..s.len() - 2].to_string();
        } else if (s.starts_with("\\boxed{") || s.starts_with("\\fbox{")) && s.ends_with('}') {
            if let Some(inner) = last_boxed(&s) {
                // Only when the box spans the whole string.
                let prefix = if s.starts_with("\\boxed{") { 7 } else { 6 };
                if inner.len() + prefix + 1 == s.len() {
                    s = inner;
                }
            }
        }
        if s == before {
            return s;
        }
    }
}

/// Failure of a step that raises in the Python original.
struct Raised;

fn fix_fracs(string: &str) -> Result<String, Raised> {
    let substrs: Vec<&str> = string.split("\\frac").collect();
    let mut new_str = substrs[0].to_string();
    for substr in &substrs[1..] {
        new_str.push_str("\\frac");
        let chars: Vec<char> = substr.chars().collect();
        let first = *chars.first().ok_or(Raised)?; // substr[0] raises IndexError
        if first == '{' {
            new_str.push_str(substr);
        } else {
            if chars.len() < 2 {
                return Ok(string.to_string());
            }
            let (a, b) = (chars[0], chars[1]);
            let post: String = chars[2..].iter().collect();
            if b != '{' {
                new_str.push_str(&format!("{{{a}}}{{{b}}}{post}"));
            } else {
                new_str.push_str(&format!("{{{a}}}{b}{post}"));
            }
        }
    }
    Ok(new_str)
}

fn is_python_int_canonical(s: &str) -> bool {
    // `int(s)` succeeds and `str(int(s)) == s`.
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" && !s.starts_with('-') || !digits.starts_with('0'))
}

fn fix_a_slash_b(string: &str) -> String {
    let parts: Vec<&str> = string.split('/').collect();
    if parts.len() != 2 {
        return string.to_string();
    }
    if is_python_int_canonical(parts[0]) && is_python_int_canonical(parts[1]) {
        format!("\\frac{{{}}}{{{}}}", parts[0], parts[1])
    } else {
        string.to_string()
    }
}

fn remove_right_units(string: &str) -> Result<String, Raised> {
    if string.contains("\\text{ ") {
        let splits: Vec<&str> = string.split("\\text{ ").collect();
        if splits.len() != 2 {
            return Err(Raised);
        }
        Ok(splits[0].to_string())
    } else {
        Ok(string.to_string())
    }
}

fn fix_sqrt(string: &str) -> Result<String, Raised> {
    if !string.contains("\\sqrt") {
        return Ok(string.to_string());
    }
    let splits: Vec<&str> = string.split("\\sqrt").collect();
    let mut new_string = splits[0].to_string();
    for split in &splits[1..] {
        let mut chars = split.chars();
        let first = chars.next().ok_or(Raised)?;
        if first != '{' {
            new_string.push_str(&format!("\\sqrt{{{first}}}{}", chars.as_str()));
        } else {
            new_string.push_str("\\sqrt");
            new_string.push_str(split);
        }
    }
    Ok(new_string)
}

fn strip_string_inner(string: &str) -> Result<String, Raised> {
    let mut s = string.replace('\n', "");
    s = s.replace("\\!", "");
    s = s.replace("\\\\", "\\");
    s = s.replace("tfrac", "frac").replace("dfrac", "frac");
    s = s.replace("\\left", "").replace("\\right", "");
    s = s.replace("^{\\circ}", "").replace("^\\circ", "");
    s = s.replace("\\$", "");
    s = remove_right_units(&s)?;
    s = s.replace("\\%", "");
    s = s.replace(" .", " 0.").replace("{.", "{0.");
    if s.is_empty() {
        return Ok(s);
    }
    if s.starts_with('.') {
        s = format!("0{s}");
    }
    {
        let parts: Vec<&str> = s.split('=').collect();
        if parts.len() == 2 && parts[0].chars().count() <= 2 {
            s = parts[1].to_string();
        }
    }
    s = fix_sqrt(&s)?;
    s = s.replace(' ', "");
    s = fix_fracs(&s)?;
    if s == "0.5" {
        s = "\\frac{1}{2}".to_string();
    }
    Ok(fix_a_slash_b(&s))
}

/// Hendrycks' `strip_string` (`None` where the Python original raises).
pub fn strip_string(s: &str) -> Option<String> {
    strip_string_inner(s).ok()
}

/// The documented MATH normaliser: [`math_prenormalize`] then Hendrycks' `strip_string`
/// (`None` where that raises).
pub fn normalize_math(s: &str) -> Option<String> {
    strip_string(&math_prenormalize(s))
}

/// Hendrycks' `is_equiv` on pre-normalised strings (see the module docs).
pub fn math_equal(a: &str, b: &str) -> bool {
    let (a, b) = (math_prenormalize(a), math_prenormalize(b));
    match (strip_string(&a), strip_string(&b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

// ---------------------------------------------------------------------------------------------
// Multiple choice and aggregation

/// numpy `argmax`: first maximal index; a NaN wins at its first occurrence.
pub fn argmax(values: &[f64]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, &v) in values.iter().enumerate() {
        if v.is_nan() {
            return Some(i);
        }
        match best {
            Some(b) if values[b] >= v => {}
            _ => best = Some(i),
        }
    }
    best
}

/// Predictions of one item from `(summed log-likelihood, normalising length)` per choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct McPrediction {
    /// argmax of the log-likelihoods.
    pub pred: usize,
    /// argmax of log-likelihood / length.
    pub pred_norm: usize,
}

/// `acc` / `acc_norm` predictions (harness definitions; ties → first). Panics on no choices.
pub fn mc_predict(scores: &[(f64, usize)]) -> McPrediction {
    assert!(!scores.is_empty(), "multiple choice item without choices");
    let lls: Vec<f64> = scores.iter().map(|s| s.0).collect();
    let normed: Vec<f64> = scores.iter().map(|&(ll, len)| ll / len as f64).collect();
    McPrediction {
        pred: argmax(&lls).unwrap(),
        pred_norm: argmax(&normed).unwrap(),
    }
}

/// `(acc, acc_norm)` of one item as 0/1.
pub fn mc_correct(scores: &[(f64, usize)], gold: usize) -> (f64, f64) {
    let p = mc_predict(scores);
    (
        f64::from(u8::from(p.pred == gold)),
        f64::from(u8::from(p.pred_norm == gold)),
    )
}

/// Arithmetic mean (NaN for no values).
pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// Sample standard deviation (`n − 1`), NaN for `n < 2`.
pub fn sample_stddev(values: &[f64]) -> f64 {
    let n = values.len();
    if n < 2 {
        return f64::NAN;
    }
    let mu = mean(values);
    (values.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
}

/// The harness's `mean_stderr`: `sample_stddev / sqrt(n)`; NaN for `n < 2`.
pub fn mean_stderr(values: &[f64]) -> f64 {
    sample_stddev(values) / (values.len() as f64).sqrt()
}
