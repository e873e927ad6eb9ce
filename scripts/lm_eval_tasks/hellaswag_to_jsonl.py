"""Converts the shared HellaSwag validation set in llama.cpp's text layout (six lines per item:
`activity_label: ctx`, label, four endings) to JSON lines {context, label, endings} that
rr_hellaswag.yaml reads."""
import bz2
import json
import sys

src, dst = sys.argv[1], sys.argv[2]
with bz2.open(src, "rt", encoding="utf-8") as f:
    lines = f.read().split("\n")
if lines and lines[-1] == "":
    lines.pop()
if len(lines) % 6:
    sys.exit(f"error: {src}: {len(lines)} lines, not a multiple of 6")
with open(dst + ".tmp", "w", encoding="utf-8") as out:
    for i in range(0, len(lines), 6):
        item = {"context": lines[i], "label": int(lines[i + 1]), "endings": lines[i + 2 : i + 6]}
        out.write(json.dumps(item) + "\n")
import os

os.replace(dst + ".tmp", dst)
