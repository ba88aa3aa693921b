"""docs/ARCHITECTURE.md's module index names every module of every package, and nothing else."""

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _index_rows() -> list[tuple[str, str, str]]:
    """(package, module file, what it owns) for every row of the module index."""
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    section = doc.split("\n## Module index\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    package = ""
    for line in section.splitlines():
        heading = re.match(r"### .*\(`llmserve\.(\w+)`\)", line)
        if heading:
            package = heading.group(1)
            continue
        row = re.match(r"\| `([\w.]+\.py)` \| (.*) \|$", line)
        if row:
            assert package, f"a module row before any package heading: {line}"
            rows.append((package, row.group(1), row.group(2)))
    return rows


def _indexed() -> set[tuple[str, str]]:
    return {(package, module) for package, module, _ in _index_rows()}


def _on_disk() -> set[tuple[str, str]]:
    modules = set()
    for path in [*ROOT.glob("services/*/src/llmserve/*/*.py"), *ROOT.glob("libs/*/src/llmserve/*/*.py")]:
        package = path.parent.name
        if package == "v1" or path.name == "__init__.py":  # generated stubs; package markers
            continue
        modules.add((package, path.name))
    return modules


def test_every_module_is_in_the_index_and_every_entry_exists():
    indexed, on_disk = _indexed(), _on_disk()
    assert on_disk - indexed == set(), "modules missing from docs/ARCHITECTURE.md's module index"
    assert indexed - on_disk == set(), "the module index names modules that do not exist"


def test_functions_the_doc_points_to_exist():
    """Every `module.py: name` pointer in the doc names a function or class defined in that module."""
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    sources = {path.name: path for path in [*ROOT.glob("services/*/src/llmserve/*/*.py"), *ROOT.glob("libs/*/src/llmserve/*/*.py")]}
    pointers = re.findall(r"`(?:[\w-]+/)*(\w+\.py): ([\w.]+)`", doc)
    assert pointers, "the doc points to no function"
    for module, name in pointers:
        candidates = [p for n, p in sources.items() if n == module]
        assert candidates, f"{module} (pointed to for {name}) does not exist"
        text = "\n".join(p.read_text() for p in ROOT.glob(f"*/*/src/llmserve/*/{module}"))
        last = name.split(".")[-1]
        assert re.search(rf"(def|class) {re.escape(last)}\b", text), f"{module} defines no {name}"


def test_names_in_the_index_are_defined_in_their_module():
    """The names a row gives in parentheses, `(Owner.method, function)`, are defined in that module."""
    for package, module, owns in _index_rows():
        [source] = ROOT.glob(f"*/*/src/llmserve/{package}/{module}")
        text = source.read_text()
        for group in re.findall(r"\(([^()]*)\)", owns):
            for name in re.findall(r"`([A-Za-z_][\w.]*)`", group):
                first = name.split(".")[0]
                if not re.search(rf"(def|class) {first}\b|^{first} = ", text, re.M):
                    pytest.fail(f"{package}/{module} defines no {first} (named in the module index)")
