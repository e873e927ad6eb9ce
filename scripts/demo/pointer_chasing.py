"""Pointer-chasing problems for the demo probe p2 in docs/DEMO.md (issue 16).

A problem is four chains of variables, each rooted at a distinct digit, interleaved; the
question asks for the end of one chain, and the answer is its root digit, with no work written
out, so each hop has to happen inside the model:

    a is 4. b is 2. c is 5. d is a. e is d. What is e?   ->   #### 4   (steps = 3)

Variables are named a, b, c, ... in order of appearance, so the only unpredictable tokens are
the chain choices, the root digits and the answer. The queried chain has `steps` statements
(uniform in 1..max_steps); the other chains have 1..DISTRACTOR_MAX (default 4 chains, 1-4).
Rows are the `rr eval --tasks synth` schema. Probe p2 used the defaults, p3 `2 2`.

usage: python3 pointer_chasing.py N MAX_STEPS SEED OUT.jsonl [CHAINS DISTRACTOR_MAX]
"""
import json
import random
import string
import sys

CHAINS = int(sys.argv[5]) if len(sys.argv) > 5 else 4
DISTRACTOR_MAX = int(sys.argv[6]) if len(sys.argv) > 6 else 4


def problem(rng, steps):
    digits = rng.sample(range(10), CHAINS)
    lengths = [steps] + [rng.randint(1, DISTRACTOR_MAX) for _ in range(CHAINS - 1)]
    # Chain 0 is the queried one; shuffle which position it takes among the chains.
    order = list(range(CHAINS))
    rng.shuffle(order)
    lengths = [lengths[order.index(c)] for c in range(CHAINS)]
    digits = [digits[order.index(c)] for c in range(CHAINS)]
    target = order[0]
    remaining = lengths[:]
    last = [None] * CHAINS
    names = iter(string.ascii_lowercase)
    statements = []
    while any(remaining):
        c = rng.choice([i for i in range(CHAINS) if remaining[i]])
        name = next(names)
        statements.append(f"{name} is {digits[c] if last[c] is None else last[c]}.")
        last[c] = name
        remaining[c] -= 1
    question = " ".join(statements) + f" What is {last[target]}?"
    # The answer starts like the synth prompt's `A: Let's think step by step.`
    answer = f"Let's think step by step. #### {digits[target]}"
    return {"question": question, "answer": answer, "steps": steps}


def main():
    n, max_steps, seed, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    rng = random.Random(seed)
    with open(out, "w") as f:
        for _ in range(n):
            f.write(json.dumps(problem(rng, rng.randint(1, max_steps))) + "\n")


if __name__ == "__main__":
    main()
