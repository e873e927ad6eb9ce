//! Metrics against lm-evaluation-harness / Hendrycks behaviour, worked out by hand from the
//! reference regexes and code (and cross-checked with Python's `re`).

use rr_eval::metrics::*;

/// (generation, strict raw, flexible raw, strict normalised, flexible normalised)
#[allow(clippy::type_complexity)]
const GSM8K_TABLE: &[(&str, Option<&str>, Option<&str>, Option<&str>, Option<&str>)] = &[
    // `$1,000.` is one group-1 match ([$0-9.,]{2,}); normalisation drops ",", "$", one final ".".
    (
        "The answer is $1,000.",
        None,
        Some("$1,000."),
        None,
        Some("1000"),
    ),
    // Strict takes the number after "#### "; flexible's last match is the same "18".
    (
        "She makes $18 every day.\n#### 18",
        Some("18"),
        Some("18"),
        Some("18"),
        Some("18"),
    ),
    // Strict's class includes "," and ".", so it swallows the sentence's period.
    (
        "#### 1,234.",
        Some("1,234."),
        Some("1,234."),
        Some("1234"),
        Some("1234"),
    ),
    // Negative numbers: the optional leading "-".
    ("It costs -5 dollars", None, Some("-5"), None, Some("-5")),
    (
        "#### -42",
        Some("-42"),
        Some("-42"),
        Some("-42"),
        Some("-42"),
    ),
    // "$-5": group 1 fails at "$" (needs two class chars), group 2 matches "-5".
    ("$-5", None, Some("-5"), None, Some("-5")),
    // Several numbers: the last wins; single digits come from group 2.
    ("2 + 3 = 5", None, Some("5"), None, Some("5")),
    ("10, 20, and 30.", None, Some("30."), None, Some("30")),
    ("x = 1.5e3", None, Some("3"), None, Some("3")),
    // Strict keeps the first "####" number; flexible the last number anywhere.
    (
        "#### 5\nThen 7 more",
        Some("5"),
        Some("7"),
        Some("5"),
        Some("7"),
    ),
    // No number.
    ("no number here", None, None, None, None),
    // No space after ####: strict fails.
    ("####42", None, Some("42"), None, Some("42")),
    // "\.$" removes one trailing period only: "7..." → "7.." (wrong, as in the harness).
    ("The total is 7...", None, Some("7..."), None, Some("7..")),
    // An ellipsis alone is a match, and the last one.
    ("Answer: 7 ...", None, Some("..."), None, Some("..")),
    ("3.5 apples", None, Some("3.5"), None, Some("3.5")),
    ("Total: $0.50.", None, Some("$0.50."), None, Some("0.50")),
    ("The answer is 18.\n", None, Some("18."), None, Some("18")),
];

#[test]
fn gsm8k_extraction_table() {
    for &(g, s, f, sn, fnorm) in GSM8K_TABLE {
        // No match is the harness's "[invalid]", which normalisation leaves as it is.
        let strict = extract_strict(g, Gsm8kStrict::Hashes);
        let flex = extract_flexible(g);
        assert_eq!(strict, s.unwrap_or(GSM8K_INVALID), "strict of {g:?}");
        assert_eq!(flex, f.unwrap_or(GSM8K_INVALID), "flexible of {g:?}");
        assert_eq!(
            normalize_number(&strict),
            sn.unwrap_or(GSM8K_INVALID),
            "strict norm {g:?}"
        );
        assert_eq!(
            normalize_number(&flex),
            fnorm.unwrap_or(GSM8K_INVALID),
            "flex norm {g:?}"
        );
    }
}

#[test]
fn gsm8k_correctness() {
    let full_reference = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every day at the farmer’s market.\n#### 18";
    assert_eq!(normalize_number(full_reference), "18");
    assert_eq!(
        gsm8k_correct("So she makes $18.\n#### 18", "18", Gsm8kStrict::Hashes),
        (true, true)
    );
    assert_eq!(
        gsm8k_correct(
            "So she makes $18.\n#### 18",
            full_reference,
            Gsm8kStrict::Hashes
        ),
        (true, true)
    );
    assert_eq!(
        gsm8k_correct("She makes $18 a day.", "18", Gsm8kStrict::Hashes),
        (false, true)
    );
    assert_eq!(
        gsm8k_correct("#### 18\nand 3 more", "18", Gsm8kStrict::Hashes),
        (true, false)
    );
    assert_eq!(
        gsm8k_correct("The answer is $1,000.", "1,000", Gsm8kStrict::Hashes),
        (false, true)
    );
    assert_eq!(
        gsm8k_correct("The answer is 17.", "18", Gsm8kStrict::Hashes),
        (false, false)
    );
    assert_eq!(
        gsm8k_correct("nothing", "18", Gsm8kStrict::Hashes),
        (false, false)
    );
    assert_eq!(
        gsm8k_correct("It is -3.", "-3", Gsm8kStrict::Hashes),
        (false, true)
    );
}

#[test]
fn math_boxed() {
    assert_eq!(
        last_boxed(r"so $\boxed{\frac{1}{2}}$ done").as_deref(),
        Some(r"\frac{1}{2}")
    );
    assert_eq!(
        last_boxed(r"\boxed{1} then \boxed{2}").as_deref(),
        Some("2")
    );
    assert_eq!(last_boxed(r"\fbox{7}").as_deref(), Some("7"));
    assert_eq!(last_boxed(r"$\boxed 5$").as_deref(), Some("5"));
    assert_eq!(last_boxed(r"\boxed{3"), None);
    assert_eq!(last_boxed("no box"), None);
}

#[test]
fn math_extraction() {
    let g = "We get 6.\nFinal Answer: The final answer is $[2,5)$. I hope it is correct.";
    assert_eq!(extract_math_answer(g).as_deref(), Some("$[2,5)$"));
    assert!(math_equal(&extract_math_answer(g).unwrap(), "[2,5)"));
    // Minerva's regex on a generation cut before "I hope it is correct." (harness appends it).
    let g = "Final Answer: The final answer is $24$. ";
    assert_eq!(extract_math_answer(g).as_deref(), Some("$24$"));
    // Boxed fallback.
    assert_eq!(
        extract_math_answer(r"so $x = \boxed{\dfrac{3}{4}}$.").as_deref(),
        Some(r"\dfrac{3}{4}")
    );
    // Loose fallback.
    assert_eq!(
        extract_math_answer("Thus the final answer is 12.").as_deref(),
        Some("12")
    );
    assert_eq!(extract_math_answer("I don't know"), None);
}

#[test]
fn math_normaliser() {
    let eq = [
        (r"\frac12", r"\frac{1}{2}"),
        (r"\dfrac{3}{4}", r"\frac{3}{4}"),
        (r"\tfrac{3}{4}", r"\frac{3}{4}"),
        (r"10^\circ", "10"),
        (r"10^{\circ}", "10"),
        ("x = 5", "5"),
        ("y=2x+1", "2x+1"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
        ("0.5", r"\frac{1}{2}"),
        (".5", r"\frac{1}{2}"),
        ("3/4", r"\frac{3}{4}"),
        (r"10\text{ cm}", "10"),
        (r"5\%", "5"),
        (r"\sqrt2", r"\sqrt{2}"),
        (r"1,\!000", "1,000"),
        (r"\$5", "5"),
        // Pre-normalisation additions.
        ("$5$.", "5"),
        (r"\boxed{7}", "7"),
        ("12.", "12"),
    ];
    for (a, b) in eq {
        assert!(math_equal(a, b), "{a:?} should equal {b:?}");
    }
    let ne = [
        (r"\frac{1}{3}", r"\frac{1}{2}"),
        ("5", "6"),
        ("xyz = 5", "5"), // left side longer than 2 characters is kept
        ("03/4", r"\frac{3}{4}"),
        ("-0/4", r"\frac{0}{4}"),
        ("1000", "1,000"),
    ];
    for (a, b) in ne {
        assert!(!math_equal(a, b), "{a:?} should differ from {b:?}");
    }
    assert_eq!(strip_string(r"\frac12").as_deref(), Some(r"\frac{1}{2}"));
    assert_eq!(
        strip_string(r"\frac1{72}").as_deref(),
        Some(r"\frac{1}{72}")
    );
    assert_eq!(strip_string("-3/4").as_deref(), Some(r"\frac{-3}{4}"));
    // `\sqrt` at the end raises in Python: raw strings are compared instead.
    assert_eq!(strip_string(r"2\sqrt"), None);
    assert!(math_equal(r"2\sqrt", r"2\sqrt"));
    assert!(!math_equal(r"2\sqrt", r"2 \sqrt"));
    // Two "\text{ " units raise too.
    assert_eq!(strip_string(r"1\text{ m}\text{ s}"), None);
}

#[test]
fn multiple_choice_acc_vs_acc_norm() {
    // (summed log-likelihood, length) per choice, gold.
    let items: [(&[(f64, usize)], usize); 4] = [
        // acc picks 0 (-6 > -8); acc_norm picks 1 (-8/8 = -1 > -6/3 = -2). gold 1.
        (&[(-6.0, 3), (-8.0, 8)], 1),
        // both pick 0 (-1/3 > -4/7). gold 0.
        (&[(-1.0, 3), (-4.0, 7)], 0),
        // tie: both pick the first. gold 1.
        (&[(-3.0, 2), (-3.0, 2)], 1),
        // both pick 1 (-1 > -2; -0.25 > -2). gold 0.
        (&[(-2.0, 1), (-1.0, 4)], 0),
    ];
    let p = mc_predict(items[0].0);
    assert_eq!((p.pred, p.pred_norm), (0, 1));
    let (acc, acc_norm): (Vec<f64>, Vec<f64>) =
        items.iter().map(|(s, g)| mc_correct(s, *g)).unzip();
    assert_eq!(acc, [0.0, 1.0, 0.0, 0.0]);
    assert_eq!(acc_norm, [1.0, 1.0, 0.0, 0.0]);
    assert_eq!(mean(&acc), 0.25);
    assert_eq!(mean(&acc_norm), 0.5);
    // acc: deviations² = 0.0625·3 + 0.5625 = 0.75; /3 = 0.25; sqrt = 0.5; /sqrt(4) = 0.25.
    assert!((mean_stderr(&acc) - 0.25).abs() < 1e-12);
    // acc_norm: 4·0.25 = 1; /3; sqrt = 0.577350…; /2 = 0.288675…
    assert!((mean_stderr(&acc_norm) - 0.288_675_134_594_812_9).abs() < 1e-12);
    assert!(mean_stderr(&[1.0]).is_nan());
    // numpy argmax: NaN wins, ties → first.
    assert_eq!(argmax(&[1.0, f64::NAN, 3.0]), Some(1));
    assert_eq!(argmax(&[2.0, 2.0]), Some(0));
}

/// `gsm8k` (the harness's `gsm8k-cot` filters): (generation, strict, flexible), both after
/// the `exact_match` normalisation; worked out by hand from the regexes (Python `re` agrees).
const GSM8K_COT_TABLE: &[(&str, &str, &str)] = &[
    // The harness's own exemplar targets.
    (
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.",
        "5",
        "5",
    ),
    (
        "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29.",
        "29",
        "29",
    ),
    (
        "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8.",
        "8",
        "8",
    ),
    // `$` is outside the strict class: no strict match; flexible takes "$1,000.".
    ("The answer is $1,000.", "[invalid]", "1000"),
    ("The answer is -3.", "-3", "-3"),
    // The final `.` of the strict regex needs a character: none at the very end.
    ("The answer is 6", "[invalid]", "6"),
    // ... and it eats one digit when there is no period.
    ("The answer is 62", "6", "62"),
    ("The answer is 1,234.56.", "1234.56", "1234.56"),
    // `.` does not match a newline, so the period before it closes the match.
    ("The answer is 18.\n", "18", "18"),
    // First strict match, last flexible one.
    ("The answer is 5. The answer is 7.", "5", "7"),
    ("I am not sure.", "[invalid]", "[invalid]"),
    ("the answer is 4.", "[invalid]", "4"),
];

#[test]
fn gsm8k_cot_extraction_table() {
    for &(g, strict, flexible) in GSM8K_COT_TABLE {
        let s = normalize_number(&extract_strict(g, Gsm8kStrict::AnswerIs));
        let f = normalize_number(&extract_flexible(g));
        assert_eq!((s.as_str(), f.as_str()), (strict, flexible), "{g:?}");
    }
    assert_eq!(
        gsm8k_correct(
            "So 16 - 3 - 4 = 9 eggs, 9 * 2 = 18. The answer is 18.",
            "18",
            Gsm8kStrict::AnswerIs
        ),
        (true, true)
    );
    assert_eq!(
        gsm8k_correct("The answer is $1,000.", "1000", Gsm8kStrict::AnswerIs),
        (false, true)
    );
    assert_eq!(
        gsm8k_correct("#### 18", "18", Gsm8kStrict::AnswerIs),
        (false, true)
    );
    assert_eq!(
        gsm8k_correct("The answer is 17.", "18", Gsm8kStrict::AnswerIs),
        (false, false)
    );
}

/// Minerva's `normalize_final_answer` and `get_unnormalized_answer`, worked out by hand from the
/// harness's `minerva_math/utils.py`.
#[test]
fn minerva_normalisation() {
    for (raw, want) in [
        ("$24$", "24"),
        ("$[2,5)$", "[2,5)"),
        ("x = 5", "5"),
        (r"\frac12", r"\frac{1}{2}"),
        (r"\sqrt3", r"\sqrt{3}"),
        (r"10 \text{ inches}", "10"),
        ("1,000", "1000"),
        (r"\boxed{7}", "7"),
        (r"\text{(C)}", "(C)"),
        (r"90^\circ", "90"),
        (r"$\$5.50$", "5.50"),
        (r"\dfrac{3}{4}", r"\dfrac{3}{4}"),
        ("a 5", "5"),
    ] {
        assert_eq!(normalize_final_answer(raw), want, "{raw:?}");
    }
    let g = "We find 6.\nFinal Answer: The final answer is $[2,5)$. I hope it is correct.";
    assert_eq!(minerva_unnormalized_answer(g), "$[2,5)$");
    assert_eq!(
        minerva_unnormalized_answer("Final Answer: The final answer is $24$. "),
        "$24$"
    );
    assert_eq!(
        minerva_unnormalized_answer(r"so $\boxed{3}$"),
        "[invalidanswer]"
    );
    assert!(minerva_exact_match(g, "[2,5)"));
    assert!(minerva_exact_match(
        "Final Answer: The final answer is $0.5$. I hope it is correct.",
        r"\frac{1}{2}"
    ));
    assert!(!minerva_exact_match(r"The answer is $\boxed{3}$.", "3"));
    assert!(!minerva_exact_match(
        "Final Answer: The final answer is $4$. I hope it is correct.",
        "3"
    ));
}

/// math_verify-style equivalence on hand-made pairs.
#[test]
fn math_verify_pairs() {
    use rr_eval::math_verify::{equivalent, extract_answer, math_verify};
    let equal = [
        ("0.5", r"\frac12"),
        ("0.5", "1/2"),
        (r"\frac{1}{2}", "1/2"),
        (r"\dfrac{3}{4}", r"\frac{3}{4}"),
        (r"\tfrac34", "0.75"),
        (r"\sqrt{2}", r"\sqrt2"),
        (r"2\sqrt3", r"2\sqrt{3}"),
        (r"2\sqrt{3}", r"\sqrt{12}"),
        (r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt3}{2}"),
        (r"\frac{\sqrt{3}}{2}", r"\frac{1}{2}\sqrt{3}"),
        (r"\frac{1}{\sqrt{2}}", r"\frac{\sqrt{2}}{2}"),
        (r"(2,5]", r"\left(2, 5\right]"),
        (r"[2,5)", r"$[2,5)$"),
        (r"(-\infty, 3)", r"(-\infty,3)"),
        ("1, 2, 3", "3,2,1"),
        (r"\{1,2\}", r"\{2,1\}"),
        (r"10\text{ cm}", "10"),
        (r"10 \mbox{ inches}", "10"),
        (r"30^\circ", "30"),
        (r"30^{\circ}", "30"),
        (r"45\%", "45"),
        (r"1,\!000", "1000"),
        ("1,000", "1000"),
        (r"\$5", "5"),
        ("x = 5", "5"),
        (r"\theta = \frac{\pi}{2}", r"\frac{\pi}{2}"),
        (r"\frac{\pi}{2}", r"\frac12\pi"),
        ("x^2-1", "(x-1)(x+1)"),
        ("2x+1", "1+2x"),
        (r"\text{Monday}", "Monday"),
        (r"\boxed{7}", "7"),
        ("5.", "5"),
        ("-3", r"-\frac{6}{2}"),
        ("2^{10}", "1024"),
        ("5!", "120"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
        (r"\sqrt[3]{8}", "2"),
        (r"3\cdot 4", "12"),
    ];
    for (a, b) in equal {
        assert!(equivalent(a, b), "{a:?} should equal {b:?}");
        assert!(equivalent(b, a), "{b:?} should equal {a:?}");
    }
    let different = [
        (r"\frac{1}{3}", "0.33"),
        (r"\frac{1}{3}", r"\frac{1}{2}"),
        ("(2,5]", "[2,5]"),
        ("(2,5]", "(2,5)"),
        ("(1,2,3)", "(3,2,1)"),
        ("1, 2, 3", "1, 2"),
        (r"\sqrt{2}", r"\sqrt{3}"),
        (r"2\sqrt{3}", r"3\sqrt{2}"),
        ("x^2+1", "(x+1)^2"),
        ("1000", "100"),
        (r"\text{Monday}", r"\text{Tuesday}"),
        ("5", ""),
        ("", ""),
        (r"-\infty", r"\infty"),
    ];
    for (a, b) in different {
        assert!(!equivalent(a, b), "{a:?} should differ from {b:?}");
    }
    // Extraction: final-answer line, then the last box, then the last math span.
    let g = "So $x=2$.\nFinal Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.";
    assert_eq!(extract_answer(g).as_deref(), Some(r"$\frac{1}{2}$"));
    assert_eq!(extract_answer(r"so \boxed{3} or $4$").as_deref(), Some("3"));
    assert_eq!(
        extract_answer("it is $4$ or maybe $5$").as_deref(),
        Some("5")
    );
    assert_eq!(extract_answer("no answer"), None);
    assert!(math_verify(g, "0.5"));
    assert!(!math_verify("no answer", "0.5"));
}
