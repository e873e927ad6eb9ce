"""Synthetic word problems with small counts, for the demo probes e7 and e8 in docs/DEMO.md.

The same story, wording, answer lines and `#### N` as `rr data synth-math`, but every count stays
at most MAX (20 in e7/e8) and the operands are one digit: add 1-9, subtract, multiply by 2-4,
divide by 2 or 3. The arithmetic a model has to learn is then a table of a few hundred facts
instead of numbers up to 10,000. Rows are the `rr eval --tasks synth` schema
(`question`, `answer`, `steps`); difficulty (`steps`) is uniform in 1..MAX_STEPS.

usage: python3 small_counts.py N MAX_STEPS SEED OUT.jsonl MAX
"""
import json
import random
import sys

PEOPLE = [
    ("Tom", "he", "him", "his"), ("Anna", "she", "her", "her"),
    ("Liam", "he", "him", "his"), ("Mia", "she", "her", "her"),
    ("Noah", "he", "him", "his"), ("Emma", "she", "her", "her"),
    ("Lucas", "he", "him", "his"), ("Sofia", "she", "her", "her"),
    ("Ben", "he", "him", "his"), ("Olivia", "she", "her", "her"),
    ("Jack", "he", "him", "his"), ("Ava", "she", "her", "her"),
    ("Leo", "he", "him", "his"), ("Zoe", "she", "her", "her"),
    ("Omar", "he", "him", "his"), ("Lily", "she", "her", "her"),
]
OBJECTS = [
    ("apple", "apples"), ("marble", "marbles"), ("sticker", "stickers"), ("book", "books"),
    ("pencil", "pencils"), ("cookie", "cookies"), ("shell", "shells"), ("card", "cards"),
    ("coin", "coins"), ("balloon", "balloons"), ("toy car", "toy cars"), ("stamp", "stamps"),
    ("crayon", "crayons"), ("orange", "oranges"),
]


def noun(k, obj):
    return obj[0] if k == 1 else obj[1]


def count(k, obj):
    return f"{k} {noun(k, obj)}"


def step(rng, x, most, person, other, obj, first):
    """One operation from count `x`: (question sentence, answer phrase, symbol, operand, result).

    Draws, in this order, the kind, whether the sentence starts with "Then" (never the first),
    the wording and the operand.
    """
    name, subj, him, his = person
    kinds = [k for k, ok in (("+", x < most), ("-", x >= 2), ("*", 2 * x <= most)) if ok]
    divisors = [d for d in (2, 3) if x % d == 0]
    if divisors:
        kinds.append("/")
    kind = rng.choice(kinds)
    then = not first and rng.random() < 0.5
    who = f"Then {subj}" if then else subj.capitalize()
    variant = rng.randrange(3)
    if kind == "+":
        k = rng.randint(1, min(9, most - x))
        sentence, how = [
            (f"{who} buys {k} more {noun(k, obj)}.", f"buys {k} more"),
            (f"{who} finds {k} more {noun(k, obj)}.", f"finds {k} more"),
            (f"{other} gives {him} {count(k, obj)}.", f"gets {k} more from {other}"),
        ][variant]
        return sentence, how, "+", k, x + k
    if kind == "-":
        k = rng.randint(1, x - 1)
        sentence, how = [
            (f"{who} gives {count(k, obj)} to {other}.", f"gives {k} to {other}"),
            (f"{who} loses {count(k, obj)}.", f"loses {k}"),
            (f"{who} sells {count(k, obj)}.", f"sells {k}"),
        ][variant]
        return sentence, how, "-", k, x - k
    if kind == "*":
        m = rng.choice([m for m in (2, 3, 4) if x * m <= most])
        verb = ["doubles", "triples", "quadruples"][m - 2]
        the = "Then the" if then else "The"
        sentence, how = [
            (f"{the} number of {obj[1]} {subj} has {verb}.", f"the number {verb}"),
            (f"{who} ends up with {m} times as many {obj[1]} as before.",
             f"ends up with {m} times as many"),
        ][variant % 2]
        return sentence, how, "*", m, x * m
    d = rng.choice(divisors)
    friends = "1 friend" if d == 2 else f"{d - 1} friends"
    sentence, how = [
        (f"{who} splits {his} {obj[1]} into {d} equal piles and keeps one pile.",
         f"splits them into {d} equal piles and keeps one"),
        (f"{who} shares {his} {obj[1]} equally with {friends}, so that everyone, {subj} "
         "included, gets the same number.", f"shares them equally among {d} people"),
    ][variant % 2]
    return sentence, how, "/", d, x // d


def problem(rng, max_steps, most):
    steps = rng.randint(1, max_steps)
    person = rng.choice(PEOPLE)
    other = rng.choice([p for p in PEOPLE if p[0] != person[0]])[0]
    obj = rng.choice(OBJECTS)
    name, subj = person[0], person[1]
    x = rng.randint(2, min(9, most - 1))
    question, answer = f"{name} has {count(x, obj)}.", ""
    for i in range(steps):
        sentence, how, symbol, operand, y = step(rng, x, most, person, other, obj, i == 0)
        left = " left" if symbol == "-" else ""
        answer += (f"{name} has {count(x, obj)} and {how}, so {subj} has {x} {symbol} {operand}"
                   f" = {count(y, obj)}{left}.\n")
        question += " " + sentence
        x = y
    question += f" How many {obj[1]} does {name} have now?"
    return {"question": question, "answer": answer + f"#### {x}", "steps": steps}


def main():
    n, max_steps, seed, out, most = sys.argv[1:6]
    rng = random.Random(int(seed))
    with open(out, "w") as f:
        for _ in range(int(n)):
            f.write(json.dumps(problem(rng, int(max_steps), int(most))) + "\n")


if __name__ == "__main__":
    main()
