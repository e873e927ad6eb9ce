"""Document processing for rr_hellaswag.yaml: the harness's hellaswag `preprocess`, applied to the
fields of the llama.cpp text layout (context line, label, four endings)."""
import re


def preprocess(text):
    text = text.strip()
    # WikiHow contexts mark headings with " [title]"; the harness turns them into sentence breaks
    # and drops every other bracketed tag.
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def query_from_line(line):
    """The harness's query `preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())`
    from the file's `activity_label: ctx` line, which lost the ctx_a/ctx_b split: ActivityNet
    items end in ctx_b, a fragment after the last ". " with no final period; WikiHow items
    (ctx_b empty) end in a period. The same rule as rr's `hellaswag_query_from_line`, checked
    there against the 1,000 items that have all their fields."""
    if line.endswith("."):
        return preprocess(line)
    cut = line.rfind(". ")
    if cut >= 0:
        start = cut + 2
    else:
        colon = line.find(": ")
        start = colon + 2 if colon >= 0 else 0
    return preprocess(line[:start] + line[start:].capitalize())


def process_docs(dataset):
    def one(doc):
        return {
            "query": query_from_line(doc["context"]),
            "choices": [preprocess(e) for e in doc["endings"]],
            "label": int(doc["label"]),
        }

    return dataset.map(one)
