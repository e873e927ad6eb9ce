"""Side-by-side table of rr eval and lm-evaluation-harness on the same items (markdown on stdout).

usage: compare.py OUT_DIR RR_TASK:HARNESS_TASK ...

Reads OUT_DIR/rr/<rr_task>.json (+ .samples.jsonl) written by `rr eval --log-samples` and
OUT_DIR/lm-eval/<harness_task>/<model>/results_*.json (+ samples_*.jsonl) written by
`lm_eval --log_samples`. Besides the scores and the harness's standard error, it counts the items
on which the two agree: the same predicted choice (multiple choice) or the same generated text
(generation).
"""
import glob
import json
import sys


def newest(pattern):
    files = sorted(glob.glob(pattern, recursive=True))
    if not files:
        sys.exit(f"error: nothing matches {pattern}")
    return files[-1]


def harness(out, task):
    results = json.load(open(newest(f"{out}/lm-eval/{task}/**/results_*.json")))
    scores = results["results"][task]
    samples = {}
    for line in open(newest(f"{out}/lm-eval/{task}/**/samples_{task}_*.jsonl")):
        s = json.loads(line)
        samples.setdefault(s["doc_id"], []).append(s)
    return scores, samples


def rr_side(out, task):
    results = json.load(open(f"{out}/rr/{task}.json"))
    (runs,) = results["recurrences"].values()
    samples = {}
    for line in open(f"{out}/rr/{task}.samples.jsonl"):
        s = json.loads(line)
        samples[s["doc_id"]] = s
    return runs["results"][task], samples, runs["n-samples"][task]["effective"]


def harness_choice(sample):
    """The harness's acc_norm choice: argmax of log-likelihood / len(choice string)."""
    # The harness logs each (log-likelihood, is-greedy) pair as strings.
    lls = [float(r[0][0] if isinstance(r[0], list) else r[0]) for r in sample["resps"]]
    lengths = [float(len(c)) for c in sample["doc"]["choices"]]
    normed = [ll / n for ll, n in zip(lls, lengths)]
    return max(range(len(normed)), key=lambda i: normed[i])


def agreement(rr_samples, h_samples, generative):
    same = 0
    for doc_id, r in rr_samples.items():
        h = h_samples.get(doc_id)
        if h is None:
            continue
        if generative:
            text = h[0]["resps"][0][0]
            same += r["response"] == text
        else:
            same += r["pred_norm"] == harness_choice(h[0])
    return same


def main():
    out, pairs = sys.argv[1], sys.argv[2:]
    print("| task | metric | rr | lm-eval | lm-eval stderr | \\|Δ\\| | within stderr | items | same output |")
    print("|---|---|---:|---:|---:|---:|:---:|---:|---:|")
    for pair in pairs:
        rr_task, h_task = pair.split(":")
        r_scores, r_samples, n = rr_side(out, rr_task)
        h_scores, h_samples = harness(out, h_task)
        generative = rr_task in ("gsm8k", "math", "math500")
        metrics = ["exact_match,strict-match", "exact_match,flexible-extract"] if generative else ["acc,none", "acc_norm,none"]
        same = agreement(r_samples, h_samples, generative)
        for m in metrics:
            a, b = r_scores[m], h_scores[m]
            se = h_scores[m.replace(",", "_stderr,", 1)]
            ok = "yes" if abs(a - b) <= se else "NO"
            print(f"| {rr_task} | {m.split(',')[0] if not generative else m.split(',')[1]} | {a:.4f} | {b:.4f} | {se:.4f} | {abs(a - b):.4f} | {ok} | {n} | {same}/{n} |")


if __name__ == "__main__":
    main()
