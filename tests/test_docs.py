"""README.md and docs/: every relative link resolves (a file in the repository, and a heading
where an anchor names one), every `python -m ...` the README names exists and answers --help,
and every bench table on a page is its CSV (tests/bench/report.py)."""
import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md")] + sorted(
    glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: str) -> set:
    with open(path) as f:
        return {slug(line.lstrip("#")) for line in f if line.startswith("#")}


def links(path: str) -> list[str]:
    with open(path) as f:
        text = re.sub(r"```.*?```", "", f.read(), flags=re.S)     # not inside code blocks
    return LINK.findall(text)


def test_every_relative_link_resolves_inside_the_repository():
    bad = []
    for page in PAGES:
        for target in links(page):
            if re.match(r"[a-z]+:", target):         # http(s), mailto: not ours to check
                continue
            where, _, anchor = target.partition("#")
            path = os.path.normpath(os.path.join(os.path.dirname(page), where)) if where \
                else page
            name = os.path.relpath(page, ROOT)
            if not path.startswith(ROOT + os.sep) and path != ROOT:
                bad.append(f"{name}: {target} leaves the repository")
            elif not os.path.exists(path):
                bad.append(f"{name}: {target} does not exist")
            elif anchor and path.endswith(".md") and anchor not in anchors(path):
                bad.append(f"{name}: {target} names no heading")
    assert bad == []
    assert sum(len(links(p)) for p in PAGES) >= 10       # the check saw the links


def test_every_command_the_readme_names_exists_and_answers_help():
    with open(os.path.join(ROOT, "README.md")) as f:
        modules = sorted(set(re.findall(r"python -m ([a-z_][\w.]*)", f.read())))
    assert {"data.prep", "pretrain", "finetune", "finetune.predict"} <= set(modules)
    procs = {m: subprocess.Popen([sys.executable, "-m", m, "--help"], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
             for m in modules}
    failed = {}
    for m, p in procs.items():
        out, err = p.communicate(timeout=300)
        if p.returncode != 0 or "usage" not in out.lower():
            failed[m] = (p.returncode, err[-300:])
    assert failed == {}


def test_every_bench_table_in_the_docs_is_its_csv():
    """Each `<!-- table: NAME -->` block in docs/ is what tests/bench/results/NAME.csv makes
    (a rerun of the bench rewrote both, or `python tests/bench/report.py` was run after an
    edit), or says "not measured yet" where there is none; each CSV is shown on some page and
    recorded in the index."""
    import json

    from tests.bench.report import RESULTS, BLOCK, blocks_in_docs, markdown
    shown = blocks_in_docs()
    csvs = {f[:-4] for f in os.listdir(RESULTS) if f.endswith(".csv")}
    index = json.load(open(os.path.join(RESULTS, "index.json")))
    assert csvs, "no bench table is recorded in tests/bench/results/"
    assert not csvs - set(shown), f"tables in no page of docs/: {sorted(csvs - set(shown))}"
    assert csvs <= set(index), f"tables not in index.json: {sorted(csvs - set(index))}"
    for name, page in shown.items():
        body = next(m["body"] for m in BLOCK.finditer(open(page).read()) if m["name"] == name)
        assert body == markdown(name, page=page), \
            f"{page}: the table {name} differs from its CSV; run python tests/bench/report.py"


def test_a_bench_rerun_rewrites_its_csv_and_the_block_on_the_page(tmp_path, monkeypatch):
    """The path a bench takes: its tables to CSV, the index, and the page's block from them;
    a second run with other figures replaces both, and the text around the block stays."""
    import csv

    from tests.bench.report import Tables, embed
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    page = tmp_path / "docs" / "bench.md"
    page.parent.mkdir()
    page.write_text("# Bench\n\nbefore\n<!-- table: t1 -->\nold\n<!-- /table -->\nafter\n"
                    "<!-- table: t2 -->\n<!-- /table -->\n")
    results = tmp_path / "results"
    for value in (1.5, 2.25):
        tables = Tables("demo", str(results), argv=["tests/bench/demo.py", "--n", "3",
                                                    "--results", str(results)])
        tables.add("t1", "A demo table", ["row", "clips/s", "note"],
                   [["a", value, None], ["b|c", 1234.6, "x"]])
        tables.save()
        page.write_text(embed(page.read_text(), str(results), str(page)))
        rows = list(csv.reader(open(results / "t1.csv")))
        assert rows == [["row", "clips/s", "note"], ["a", f"{value:g}", ""], ["b|c", "1235", "x"]]
        text = page.read_text()
        assert f"| a | {value:g} |  |" in text and "| b\\|c | 1235 | x |" in text
        assert text.startswith("# Bench\n\nbefore\n<!-- table: t1 -->\n| row | clips/s | note |")
        assert "<!-- /table -->\nafter\n" in text and "old" not in text
        assert text.endswith("<!-- table: t2 -->\nNot measured yet (no "
                             "`tests/bench/results/t2.csv`).\n<!-- /table -->\n")
        # the command as run, with its thread count, less --results
        assert "`OMP_NUM_THREADS=3 python tests/bench/demo.py --n 3`" in text
        assert "([CSV](../results/t1.csv))" in text
    import json
    meta = json.load(open(results / "index.json"))["t1"]
    assert meta["bench"] == "demo" and meta["caption"] == "A demo table" and "cores" in \
        meta["machine"]


@pytest.mark.slow
def test_bench_plan_writes_its_table(tmp_path):
    """A real bench through the same path, into another folder: docs untouched (about 30 s:
    the plan of 5,120 partitions)."""
    import csv

    from tests.bench.bench_plan import main
    from tests.bench.report import DOCS, doc_pages
    before = {p: open(p).read() for p in doc_pages(DOCS)}
    main(["--results", str(tmp_path)])
    rows = list(csv.reader(open(tmp_path / "plan.csv")))
    assert rows[0] == ["what", "value"]
    values = dict(rows[1:])
    assert values["partitions"] == "5120" and float(values["plan_all_workers_s"]) > 0
    assert {p: open(p).read() for p in doc_pages(DOCS)} == before
