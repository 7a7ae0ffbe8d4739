"""The hand-written stub python/radint/_core.pyi names exactly what the compiled module has.

A cheap check without mypy (`.ci/run` also runs `mypy.stubtest`, which checks signatures): a
binding added in Rust without its stub fails here.
"""

import ast
from pathlib import Path

import radint
import radint._core as core

STUB = Path(radint.__file__).with_name("_core.pyi")


def _stub_tree():
    return ast.parse(STUB.read_text(encoding="utf-8"))


def _names(body):
    out = set()
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
        elif isinstance(node, ast.Assign):
            out.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return out


def test_stub_names_match_the_module():
    tree = _stub_tree()
    public = {n for n in dir(core) if not n.startswith("_")} | {"__all__", "__version__"}
    stub = {n for n in _names(tree.body) if not n.startswith("_")} | (
        _names(tree.body) & {"__all__", "__version__"}
    )
    assert stub == public, (
        f"missing from the stub: {sorted(public - stub)}; not in the module: {sorted(stub - public)}"
    )


def test_stub_all_matches_the_module():
    (value,) = [
        n.value
        for n in _stub_tree().body
        if isinstance(n, ast.Assign) and n.targets[0].id == "__all__"
    ]
    assert sorted(ast.literal_eval(value)) == sorted(core.__all__)


def test_stub_class_members_match():
    for cls in (n for n in _stub_tree().body if isinstance(n, ast.ClassDef)):
        module_cls = getattr(core, cls.name)
        public = {n for n in dir(module_cls) if not n.startswith("_")}
        assert _names(cls.body) == public, cls.name
