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


def process_docs(dataset):
    def one(doc):
        return {
            "query": preprocess(doc["context"]),
            "choices": [preprocess(e) for e in doc["endings"]],
            "label": int(doc["label"]),
        }

    return dataset.map(one)
