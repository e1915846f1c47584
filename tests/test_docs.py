"""README.md and docs/: every relative link resolves (a file in the repository, and a heading
where an anchor names one), and every `python -m ...` the README names exists and answers
--help."""
import glob
import os
import re
import subprocess
import sys

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
