//! Symbolic equivalence of MATH answers, in the spirit of the `math_verify` package that the
//! harness's `minerva_math` reports (and the authors plot): two answers are equal when they
//! denote the same mathematical object, not when they are spelled alike.
//!
//! An answer is cleaned ([`clean`]: math delimiters, a whole-answer `\boxed{}`, `\left`/`\right`,
//! spacing commands, `\dfrac`/`\tfrac`, degrees, `\%`, `\$`, units in `\text{}`/`\mbox{}`, a
//! leading `x =`, thousands separators, a final period), then read as one of
//! * an interval `(a,b]` (brackets and endpoints must agree; `\infty` allowed),
//! * a tuple `(a,b,c)` (ordered),
//! * a set `\{a,b\}` or a bare list `a, b` (any order),
//! * an expression: numbers, `+ - * / ^ !`, `\frac`, `\sqrt`, `\sqrt[n]`, `\pi`, `\cdot`,
//!   `\times`, `\div`, `\sin`/`\cos`/`\tan`/`\ln`/`\log`/`\exp`, implicit products (`2\sqrt3`,
//!   `3x`), and variables (letters, Greek letters, `x_1`).
//!
//! Two expressions are equal when they evaluate to the same number (relative tolerance 1e-9)
//! at three fixed, unrelated assignments of their variables: an identity test that needs no
//! computer algebra (`\frac{\sqrt3}{2}` = `\frac{\sqrt{3}}{2}` = `0.8660254037844386…` exactly
//! enough; `x^2-1` = `(x-1)(x+1)`). What it does not do: it reads no matrices, equations
//! with both sides, or inequalities other than through plain string equality after cleaning.

use std::collections::BTreeSet;

/// math_verify-style score of one generation: its answer ([`extract_answer`]) is
/// [`equivalent`] to the reference box content.
pub fn math_verify(generation: &str, reference: &str) -> bool {
    extract_answer(generation).is_some_and(|a| equivalent(&a, reference))
}

/// The answer of a generation: the Minerva final-answer line's, else the last `\boxed{}`'s,
/// else the last `$…$` / `\(…\)` / `\[…\]` math span's.
pub fn extract_answer(generation: &str) -> Option<String> {
    let line = crate::metrics::minerva_unnormalized_answer(generation);
    if line != crate::metrics::MATH_INVALID && !line.is_empty() {
        return Some(line);
    }
    if let Some(b) = crate::metrics::last_boxed(generation) {
        return Some(b);
    }
    last_math_span(generation)
}

/// The content of the last `$…$`, `\(…\)` or `\[…\]` span (`$$` counts as `$`).
fn last_math_span(text: &str) -> Option<String> {
    let text = text.replace("$$", "$");
    let mut best: Option<(usize, String)> = None;
    for (open, close) in [("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")] {
        let mut rest = 0;
        while let Some(start) = text[rest..].find(open).map(|i| rest + i + open.len()) {
            let Some(len) = text[start..].find(close) else {
                break;
            };
            if best.as_ref().is_none_or(|(at, _)| start > *at) {
                best = Some((start, text[start..start + len].to_string()));
            }
            rest = start + len + close.len();
        }
    }
    best.map(|(_, s)| s).filter(|s| !s.trim().is_empty())
}

/// Whether two answers denote the same object (see the module docs).
pub fn equivalent(a: &str, b: &str) -> bool {
    let (a, b) = (clean(a), clean(b));
    if a == b {
        return !a.is_empty();
    }
    match (Answer::parse(&a), Answer::parse(&b)) {
        (Some(x), Some(y)) => x.equals(&y),
        _ => false,
    }
}

/// Removes every `\name{…}` group (balanced braces), keeping its content when `keep`.
fn replace_groups(s: &str, name: &str, keep: bool) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find(name) {
        out.push_str(&rest[..i]);
        let after = &rest[i + name.len()..];
        match matching_brace(after) {
            Some(end) => {
                if keep {
                    out.push_str(&after[1..end]);
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[i..i + name.len()]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Index of the `}` closing the `{` that `s` starts with.
fn matching_brace(s: &str) -> Option<usize> {
    if !s.starts_with('{') {
        return None;
    }
    let mut depth = 0i32;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Cleans an answer's spelling (see the module docs).
pub fn clean(answer: &str) -> String {
    let mut s = answer.trim().to_string();
    if let Some(inner) = s.strip_prefix("\\boxed").and_then(|r| {
        matching_brace(r)
            .filter(|&e| e + 1 == r.len())
            .map(|e| r[1..e].to_string())
    }) {
        s = inner;
    }
    for (from, to) in [
        ("\\left", ""),
        ("\\right", ""),
        ("\\displaystyle", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\ ", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\circ", ""),
        ("°", ""),
        ("\\%", ""),
        ("%", ""),
        ("\\$", ""),
        ("$", ""),
        ("\\(", ""),
        ("\\)", ""),
        ("\\[", ""),
        ("\\]", ""),
        ("\\mbox{", "\\text{"),
        ("\\textbf{", "\\text{"),
        ("\\mathrm{", "\\text{"),
        ("\\textnormal{", "\\text{"),
        ("\n", " "),
    ] {
        s = s.replace(from, to);
    }
    // Units: `\text{…}` beside a number goes; a `\text{…}` answer keeps its words.
    let without_text = replace_groups(&s, "\\text", false);
    s = if without_text.chars().any(|c| c.is_ascii_digit()) {
        without_text
    } else {
        replace_groups(&s, "\\text", true)
    };
    for unit in [
        "degrees", "degree", "units", "unit", "cm", "inches", "meters", "dollars",
    ] {
        if s.trim_end().ends_with(unit) && s.chars().any(|c| c.is_ascii_digit()) {
            s = s.trim_end().trim_end_matches(unit).to_string();
        }
    }
    s = strip_variable_prefix(s.trim().trim_end_matches('.').trim());
    s.retain(|c| !c.is_whitespace());
    if is_thousands(&s) {
        s.retain(|c| c != ',');
    }
    s
}

/// `x = 5`, `\theta=5`, `x \in [2,5)` → the right side, when the left is one variable.
fn strip_variable_prefix(s: &str) -> String {
    for sep in ["=", "\\in"] {
        let parts: Vec<&str> = s.split(sep).collect();
        if parts.len() == 2 {
            let lhs = parts[0].trim();
            let name = lhs.strip_prefix('\\').unwrap_or(lhs);
            let name = name.split('_').next().unwrap_or("");
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphabetic()) && lhs.len() <= 12
            {
                return parts[1].trim().to_string();
            }
        }
    }
    s.to_string()
}

/// `1,000` or `-12,345.5`: a number with thousands separators.
fn is_thousands(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    let int = s.split('.').next().unwrap_or("");
    let frac_ok = s
        .split('.')
        .nth(1)
        .is_none_or(|f| f.bytes().all(|b| b.is_ascii_digit()));
    let groups: Vec<&str> = int.split(',').collect();
    groups.len() > 1
        && frac_ok
        && s.matches('.').count() <= 1
        && (1..=3).contains(&groups[0].len())
        && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_digit()))
        && groups[1..].iter().all(|g| g.len() == 3)
}

/// Splits at commas outside any brackets.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Whether the bracket opening `s` closes at its last character.
fn encloses(s: &str) -> bool {
    let mut depth = 0i32;
    for (i, c) in s.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    return i + c.len_utf8() == s.len();
                }
            }
            _ => {}
        }
    }
    false
}

/// A cleaned answer, read.
enum Answer {
    Expr(Expr),
    /// Closed-left, closed-right, endpoints.
    Interval(bool, bool, Expr, Expr),
    Tuple(Vec<Expr>),
    Set(Vec<Expr>),
}

impl Answer {
    fn parse(s: &str) -> Option<Answer> {
        let exprs = |parts: Vec<&str>| {
            parts
                .into_iter()
                .map(Expr::parse)
                .collect::<Option<Vec<_>>>()
        };
        if let Some(inner) = s.strip_prefix("\\{").and_then(|r| r.strip_suffix("\\}")) {
            return Some(Answer::Set(exprs(split_top_level(inner))?));
        }
        let first = s.chars().next()?;
        let last = s.chars().last()?;
        if matches!(first, '(' | '[') && matches!(last, ')' | ']') {
            let inner = &s[1..s.len() - 1];
            let parts = split_top_level(inner);
            let bracketed = first == '[' || last == ']' || encloses(s);
            if parts.len() == 2 && bracketed {
                let mut ends = exprs(parts)?.into_iter();
                let (lo, hi) = (ends.next()?, ends.next()?);
                return Some(Answer::Interval(first == '[', last == ']', lo, hi));
            }
            if parts.len() > 2 && first == '(' && last == ')' && encloses(s) {
                return Some(Answer::Tuple(exprs(parts)?));
            }
        }
        let parts = split_top_level(s);
        if parts.len() > 1 {
            return Some(Answer::Set(exprs(parts)?));
        }
        Expr::parse(s).map(Answer::Expr)
    }

    fn equals(&self, other: &Answer) -> bool {
        match (self, other) {
            (Answer::Expr(a), Answer::Expr(b)) => a.same_value(b),
            (Answer::Interval(l1, r1, a1, b1), Answer::Interval(l2, r2, a2, b2)) => {
                l1 == l2 && r1 == r2 && a1.same_value(a2) && b1.same_value(b2)
            }
            (Answer::Tuple(a), Answer::Tuple(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same_value(y))
            }
            (Answer::Set(a), Answer::Set(b)) => same_multiset(a, b),
            _ => false,
        }
    }
}

/// Equal as multisets (every element matched to a distinct equal one).
fn same_multiset(a: &[Expr], b: &[Expr]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut used = vec![false; b.len()];
    a.iter().all(|x| {
        let hit = (0..b.len()).find(|&j| !used[j] && x.same_value(&b[j]));
        hit.map(|j| used[j] = true).is_some()
    })
}

/// One-argument functions.
#[derive(Debug, Clone, Copy)]
enum Func {
    Sin,
    Cos,
    Tan,
    Ln,
    Exp,
}

/// An arithmetic expression over variables.
#[derive(Debug, Clone)]
enum Expr {
    Num(f64),
    Var(String),
    Neg(Box<Expr>),
    Add(Box<Expr>, Box<Expr>),
    Sub(Box<Expr>, Box<Expr>),
    Mul(Box<Expr>, Box<Expr>),
    Div(Box<Expr>, Box<Expr>),
    Pow(Box<Expr>, Box<Expr>),
    Root(Box<Expr>, Box<Expr>),
    Fact(Box<Expr>),
    Call(Func, Box<Expr>),
}

impl Expr {
    fn parse(s: &str) -> Option<Expr> {
        let mut p = Parser {
            chars: s.chars().collect(),
            pos: 0,
        };
        let e = p.sum()?;
        (p.pos == p.chars.len()).then_some(e)
    }

    fn vars(&self, out: &mut BTreeSet<String>) {
        match self {
            Expr::Num(_) => {}
            Expr::Var(v) => {
                out.insert(v.clone());
            }
            Expr::Neg(a) | Expr::Fact(a) | Expr::Call(_, a) => a.vars(out),
            Expr::Add(a, b)
            | Expr::Sub(a, b)
            | Expr::Mul(a, b)
            | Expr::Div(a, b)
            | Expr::Pow(a, b)
            | Expr::Root(a, b) => {
                a.vars(out);
                b.vars(out);
            }
        }
    }

    fn eval(&self, value: &dyn Fn(&str) -> f64) -> f64 {
        let e = |x: &Expr| x.eval(value);
        match self {
            Expr::Num(x) => *x,
            Expr::Var(v) => value(v),
            Expr::Neg(a) => -e(a),
            Expr::Add(a, b) => e(a) + e(b),
            Expr::Sub(a, b) => e(a) - e(b),
            Expr::Mul(a, b) => e(a) * e(b),
            Expr::Div(a, b) => e(a) / e(b),
            Expr::Pow(a, b) => e(a).powf(e(b)),
            Expr::Root(n, x) => e(x).powf(1.0 / e(n)),
            Expr::Fact(a) => factorial(e(a)),
            Expr::Call(f, a) => {
                let x = e(a);
                match f {
                    Func::Sin => x.sin(),
                    Func::Cos => x.cos(),
                    Func::Tan => x.tan(),
                    Func::Ln => x.ln(),
                    Func::Exp => x.exp(),
                }
            }
        }
    }

    /// Same value at three fixed assignments of the variables (relative tolerance 1e-9).
    fn same_value(&self, other: &Expr) -> bool {
        let mut names = BTreeSet::new();
        self.vars(&mut names);
        other.vars(&mut names);
        let mut compared = 0;
        for round in 0..3u64 {
            let value = |name: &str| variable_value(name, round);
            let (x, y) = (self.eval(&value), other.eval(&value));
            if x.is_nan() && y.is_nan() {
                continue;
            }
            let close = x == y
                || (x.is_finite()
                    && y.is_finite()
                    && (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0));
            if !close {
                return false;
            }
            compared += 1;
        }
        compared > 0
    }
}

/// A fixed value in (1, 3) for a variable name and round, unrelated across names.
fn variable_value(name: &str, round: u64) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 29;
    1.0 + 2.0 * ((h >> 11) as f64 / (1u64 << 53) as f64)
}

fn factorial(x: f64) -> f64 {
    if x < 0.0 || x.fract() != 0.0 || x > 170.0 {
        return f64::NAN;
    }
    (1..=x as u64).map(|k| k as f64).product()
}

/// Recursive-descent reader of LaTeX arithmetic (see the module docs).
struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        let hit = self.peek() == Some(c);
        self.pos += usize::from(hit);
        hit
    }

    /// The command name after a `\` at the cursor, without consuming it.
    fn command(&self) -> Option<String> {
        if self.peek() != Some('\\') {
            return None;
        }
        let name: String = self.chars[self.pos + 1..]
            .iter()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect();
        (!name.is_empty()).then_some(name)
    }

    fn sum(&mut self) -> Option<Expr> {
        let mut e = self.product()?;
        loop {
            if self.eat('+') {
                e = Expr::Add(Box::new(e), Box::new(self.product()?));
            } else if self.eat('-') {
                e = Expr::Sub(Box::new(e), Box::new(self.product()?));
            } else {
                return Some(e);
            }
        }
    }

    fn product(&mut self) -> Option<Expr> {
        let mut e = self.unary()?;
        loop {
            let cmd = self.command();
            if self.eat('*') || matches!(cmd.as_deref(), Some("cdot" | "times")) {
                if let Some(c) = cmd {
                    self.pos += 1 + c.len();
                }
                e = Expr::Mul(Box::new(e), Box::new(self.unary()?));
            } else if self.eat('/') || cmd.as_deref() == Some("div") {
                if let Some(c) = cmd {
                    self.pos += 1 + c.len();
                }
                e = Expr::Div(Box::new(e), Box::new(self.unary()?));
            } else if self.starts_atom() {
                e = Expr::Mul(Box::new(e), Box::new(self.power()?));
            } else {
                return Some(e);
            }
        }
    }

    /// Whether an implicit product continues here.
    fn starts_atom(&self) -> bool {
        match self.peek() {
            Some(c) if c.is_ascii_alphanumeric() || matches!(c, '(' | '{' | '.') => true,
            Some('\\') => !matches!(
                self.command().as_deref(),
                Some("cdot" | "times" | "div") | None
            ),
            _ => false,
        }
    }

    fn unary(&mut self) -> Option<Expr> {
        if self.eat('-') {
            return Some(Expr::Neg(Box::new(self.unary()?)));
        }
        if self.eat('+') {
            return self.unary();
        }
        self.power()
    }

    fn power(&mut self) -> Option<Expr> {
        let mut base = self.atom()?;
        while self.eat('!') {
            base = Expr::Fact(Box::new(base));
        }
        if self.eat('^') {
            let exponent = if self.eat('-') {
                Expr::Neg(Box::new(self.argument()?))
            } else {
                self.argument()?
            };
            return Some(Expr::Pow(Box::new(base), Box::new(exponent)));
        }
        Some(base)
    }

    /// A command or `^` argument: a braced group, or a single character / command.
    fn argument(&mut self) -> Option<Expr> {
        match self.peek()? {
            '{' => self.atom(),
            c if c.is_ascii_digit() => {
                self.pos += 1;
                Some(Expr::Num(f64::from(c.to_digit(10)?)))
            }
            c if c.is_ascii_alphabetic() => {
                self.pos += 1;
                Some(Expr::Var(c.to_string()))
            }
            _ => self.atom(),
        }
    }

    fn atom(&mut self) -> Option<Expr> {
        let c = self.peek()?;
        if c.is_ascii_digit() || c == '.' {
            return self.number();
        }
        if c.is_ascii_alphabetic() {
            self.pos += 1;
            return Some(self.subscripted(c.to_string()));
        }
        for (open, close) in [('(', ')'), ('{', '}'), ('[', ']')] {
            if self.eat(open) {
                let e = self.sum()?;
                return self.eat(close).then_some(e);
            }
        }
        if c == '\\' {
            return self.command_atom();
        }
        None
    }

    /// `x_1`, `a_{n}`: the subscript is part of the variable's name.
    fn subscripted(&mut self, mut name: String) -> Expr {
        if self.eat('_') {
            let start = self.pos;
            if self.peek() == Some('{') {
                while self.peek().is_some_and(|c| c != '}') {
                    self.pos += 1;
                }
                self.eat('}');
            } else {
                self.pos = (self.pos + 1).min(self.chars.len());
            }
            name.push('_');
            name.extend(&self.chars[start..self.pos]);
        }
        Expr::Var(name)
    }

    fn number(&mut self) -> Option<Expr> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit() || c == '.') {
            self.pos += 1;
        }
        let text: String = self.chars[start..self.pos].iter().collect();
        text.parse().ok().map(Expr::Num)
    }

    fn command_atom(&mut self) -> Option<Expr> {
        let name = self.command()?;
        self.pos += 1 + name.len();
        let call = |p: &mut Parser, f: Func| Some(Expr::Call(f, Box::new(p.power()?)));
        match name.as_str() {
            "frac" => {
                let (num, den) = (self.argument()?, self.argument()?);
                Some(Expr::Div(Box::new(num), Box::new(den)))
            }
            "sqrt" => {
                let index = if self.eat('[') {
                    let n = self.sum()?;
                    self.eat(']').then_some(n)?
                } else {
                    Expr::Num(2.0)
                };
                Some(Expr::Root(Box::new(index), Box::new(self.argument()?)))
            }
            "pi" => Some(Expr::Num(std::f64::consts::PI)),
            "infty" => Some(Expr::Num(f64::INFINITY)),
            "sin" => call(self, Func::Sin),
            "cos" => call(self, Func::Cos),
            "tan" => call(self, Func::Tan),
            "ln" | "log" => call(self, Func::Ln),
            "exp" => call(self, Func::Exp),
            _ => Some(self.subscripted(format!("\\{name}"))),
        }
    }
}
