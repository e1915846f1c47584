"""Bench tables as CSV files, embedded in the docs so that a rerun updates them.

A bench names each of its tables and hands over columns and rows. ``Tables.save`` writes
``tests/bench/results/<table>.csv``, records when, where and with which command it was measured
in ``tests/bench/results/index.json``, and rewrites the table's block in ``docs/`` (between
``<!-- table: <table> -->`` and ``<!-- /table -->``) from the CSV. ``--results DIR`` (every
bench takes it) writes the CSVs elsewhere and leaves the docs alone: for trial runs.

``python tests/bench/report.py`` rewrites every block from the CSVs (after editing a CSV by
hand); ``--take DIR`` first copies in the tables another machine wrote (``launch/gpu_check.sh``
writes its own to ``runs/gpu_check/results/``). ``tests/test_docs.py`` checks that every block
equals its CSV.
"""
from __future__ import annotations

import csv
import datetime
import io
import json
import os
import platform
import re
import shlex
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)

from data.atomic import write_text_atomic  # noqa: E402

RESULTS = os.path.join(ROOT, "tests", "bench", "results")
DOCS = os.path.join(ROOT, "docs")
BLOCK = re.compile(r"(<!-- table: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def _write_index(path: str, index: dict):
    write_text_atomic(path, json.dumps(dict(sorted(index.items())), indent=1) + "\n")


def add_results_arg(ap):
    ap.add_argument("--results", default=RESULTS, metavar="DIR",
                    help="write the tables' CSV files here (default tests/bench/results/, which "
                         "also rewrites their blocks in docs/; another folder leaves the docs "
                         "alone)")


def machine(device: str | None = None) -> str:
    """The machine in a few words: the GPU's name on CUDA, else the CPU model; cores; torch."""
    import torch
    if device and str(device).startswith("cuda") and torch.cuda.is_available():
        what = torch.cuda.get_device_name(torch.device(device))
    else:
        what = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                what = next(line.split(":", 1)[1].strip() for line in f
                            if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return f"{what}, {os.cpu_count()} cores, torch {torch.__version__.split('+')[0]}"


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


class Tables:
    """The tables of one bench run."""

    def __init__(self, bench: str, results: str = RESULTS, device: str | None = None,
                 argv: list[str] | None = None):
        self.bench, self.results, self.device = bench, results, device
        argv = list(sys.argv if argv is None else argv)
        script = os.path.relpath(os.path.abspath(argv[0]), ROOT) if argv else bench
        args, rest = [], argv[1:]
        while rest:                         # the command as run, less where it wrote
            a = rest.pop(0)
            if a == "--results":
                rest = rest[1:]
            elif not a.startswith("--results="):
                args.append(a)
        threads = os.environ.get("OMP_NUM_THREADS")   # the thread count sets the figures
        self.command = (f"OMP_NUM_THREADS={threads} " if threads else "") + "python " + \
            " ".join(shlex.quote(a) for a in [script, *args])
        self.tables: dict[str, dict] = {}

    def add(self, name: str, caption: str, columns: list[str], rows: list[list]):
        """One table: ``rows`` hold values in the order of ``columns`` (None for empty)."""
        assert all(len(r) == len(columns) for r in rows), name
        self.tables[name] = {"caption": caption, "columns": columns,
                             "rows": [[_cell(v) for v in r] for r in rows]}

    def save(self) -> list[str]:
        """Writes the CSV files and the index; rewrites the docs' blocks when ``results`` is the
        repository's. Returns the paths written."""
        os.makedirs(self.results, exist_ok=True)
        index_path = os.path.join(self.results, "index.json")
        index = json.load(open(index_path)) if os.path.isfile(index_path) else {}
        written = []
        for name, t in self.tables.items():
            path = os.path.join(self.results, f"{name}.csv")
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(t["columns"])
            w.writerows(t["rows"])
            write_text_atomic(path, buf.getvalue())
            index[name] = {"bench": self.bench, "caption": t["caption"],
                           "date": datetime.date.today().isoformat(),
                           "machine": machine(self.device), "command": self.command}
            written.append(path)
        _write_index(index_path, index)
        if os.path.abspath(self.results) == RESULTS:
            changed = embed_all()
            missing = [n for n in self.tables if n not in blocks_in_docs()]
            for n in missing:
                print(f"report: table {n} is in no page; add '<!-- table: {n} -->' and "
                      f"'<!-- /table -->' to a page in docs/ to show it", file=sys.stderr)
            written += changed
        print(f"report: {len(self.tables)} table(s) written to {self.results}", file=sys.stderr)
        return written


def markdown(name: str, results: str = RESULTS, page: str | None = None) -> str:
    """The block of table ``name`` on ``page``: a markdown table from its CSV, then where it
    was measured, with a link to the CSV."""
    path = os.path.join(results, f"{name}.csv")
    link = os.path.relpath(path, os.path.dirname(os.path.abspath(page or
                                                                 os.path.join(DOCS, "x.md"))))
    if not os.path.isfile(path):
        return f"Not measured yet (no `tests/bench/results/{name}.csv`).\n"
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    meta = json.load(open(os.path.join(results, "index.json"))).get(name, {})
    head, body = rows[0], rows[1:]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body]
    lines.append("")
    lines.append(f"{meta.get('caption', name)}. Measured {meta.get('date', '?')} on "
                 f"{meta.get('machine', '?')}: `{meta.get('command', '?')}` "
                 f"([CSV]({link})).")
    return "\n".join(lines) + "\n"


def embed(text: str, results: str = RESULTS, page: str | None = None) -> str:
    """``text`` (of ``page``) with every table block rewritten from its CSV ("not measured
    yet" where there is none)."""
    def one(m):
        return m.group(1) + markdown(m["name"], results, page) + m.group(4)
    return BLOCK.sub(one, text)


def doc_pages(docs: str = DOCS) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, files in os.walk(docs) for f in files
                  if f.endswith(".md"))


def blocks_in_docs(docs: str = DOCS) -> dict[str, str]:
    """{table name: the page that shows it}."""
    return {m["name"]: page for page in doc_pages(docs)
            for m in BLOCK.finditer(open(page).read())}


def embed_all(docs: str = DOCS, results: str = RESULTS) -> list[str]:
    """Rewrites every page's blocks from the CSVs; returns the pages changed."""
    changed = []
    for page in doc_pages(docs):
        text = open(page).read()
        new = embed(text, results, page)
        if new != text:
            write_text_atomic(page, new)
            changed.append(page)
    return changed


def take(folder: str, results: str = RESULTS) -> list[str]:
    """Copies the tables of another run's results folder (a GPU machine's, say) into
    ``results``, with their index entries; returns the table names."""
    import shutil
    theirs = json.load(open(os.path.join(folder, "index.json")))
    index_path = os.path.join(results, "index.json")
    index = json.load(open(index_path)) if os.path.isfile(index_path) else {}
    names = sorted(n for n in theirs if os.path.isfile(os.path.join(folder, f"{n}.csv")))
    for n in names:
        shutil.copyfile(os.path.join(folder, f"{n}.csv"), os.path.join(results, f"{n}.csv"))
        index[n] = theirs[n]
    _write_index(index_path, index)
    return names


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--take", metavar="DIR", help="first copy the tables of DIR (another "
                    "machine's results folder, e.g. runs/gpu_check/results) into "
                    "tests/bench/results/")
    args = ap.parse_args(argv)
    if args.take:
        names = take(args.take)
        print(f"took {', '.join(names) or 'no table'} from {args.take}")
        shown = blocks_in_docs()
        for n in names:
            if n not in shown:
                print(f"table {n} is in no page; add '<!-- table: {n} -->' and "
                      f"'<!-- /table -->' to a page in docs/ to show it")
    for p in embed_all():
        print(f"rewrote {os.path.relpath(p, ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
