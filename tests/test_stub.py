"""The hand-written stub python/radint/_core.pyi names exactly what the compiled module has,
with the same parameters in the same order (from the bindings' text signatures).

A cheap check without mypy: a binding added or changed in Rust without its stub fails here.
"""

import ast
import inspect
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


def _stub_params(fn: ast.FunctionDef) -> list[str]:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args]
    if a.vararg:
        names.append("*" + a.vararg.arg)
    names += [x.arg for x in a.kwonlyargs]
    return [n for n in names if n not in ("self", "cls")]


def test_stub_signatures_match_the_bindings():
    """Parameter names and order of every function and method the bindings give a text
    signature (PyO3 writes one from #[pyo3(signature = ...)])."""
    checked = 0

    def compare(stub: ast.FunctionDef, obj: object, where: str) -> None:
        nonlocal checked
        try:
            sig = inspect.signature(obj)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return  # no text signature (e.g. a property)
        real = [("*" + p.name if p.kind is p.VAR_POSITIONAL else p.name)
                for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD
                and p.name not in ("self", "cls", "$self", "$cls")]  # fmt: skip
        assert _stub_params(stub) == real, f"{where}: stub {_stub_params(stub)} != {real}"
        checked += 1

    for node in _stub_tree().body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            compare(node, getattr(core, node.name), node.name)
        elif isinstance(node, ast.ClassDef):
            for member in node.body:
                if isinstance(member, ast.FunctionDef) and not member.name.startswith("_"):
                    attr = inspect.getattr_static(getattr(core, node.name), member.name)
                    if callable(attr):
                        compare(member, getattr(getattr(core, node.name), member.name),
                                f"{node.name}.{member.name}")  # fmt: skip
    assert checked > 20
