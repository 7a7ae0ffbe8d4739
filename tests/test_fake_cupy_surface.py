"""The fake CuPy (``tests/gpu_harness/fake_cupy``) is no more permissive than the real CuPy.

The GPU-marked tests run radint's CUDA launchers on the fake when no GPU is present. A call
the fake accepts but CuPy refuses (a name CuPy does not have, a keyword it spells otherwise, an
argument passed by position where CuPy's parameter order differs) would pass every CPU test and
fail on the first GPU run. Here every public name of the fake is looked up in the installed CuPy
(the ``test`` extra brings it; importing it needs no GPU) and each callable's signature is
compared with CuPy's own (``inspect`` where it works, else the signature Cython writes on the
first line of the docstring).
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

FAKE_DIR = Path(__file__).parent / "gpu_harness" / "fake_cupy"


def _real_cupy() -> Any:
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed (the test extra brings it)")
    if getattr(cupy, "__version__", "").endswith("-fake"):
        pytest.skip("the fake CuPy is first on the path; this test compares it with the real one")
    return cupy


def _load_fake() -> types.ModuleType:
    """The fake module under its own name, so the real ``cupy`` stays importable beside it."""
    spec = importlib.util.spec_from_file_location(
        "radint_fake_cupy_surface", FAKE_DIR / "cupy" / "__init__.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_CYTHON_SIGNATURE = re.compile(r"^[\w.]*?(\w+)\((.*)\)(?:\s*->.*)?$")


def _parameters(obj: Any) -> list[inspect.Parameter] | None:
    """A callable's parameters without ``self``; None where neither inspect nor a docstring
    signature gives them."""
    try:
        params = list(inspect.signature(obj).parameters.values())
        if [p.kind for p in params] != [
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        ]:  # (self, /, *args, **kwargs): Cython's placeholder, the docstring says more
            return [p for p in params if p.name != "self"]
    except (TypeError, ValueError):
        pass
    first = ((getattr(obj, "__doc__", None) or "").strip().splitlines() or [""])[0]
    match = _CYTHON_SIGNATURE.match(first.replace("\\", ""))
    if match is None:
        return None
    params, kind = [], inspect.Parameter.POSITIONAL_OR_KEYWORD
    for raw in (p.strip() for p in _split_top_level(match.group(2))):
        if raw in ("", "self"):
            continue
        if raw == "/":
            params = [p.replace(kind=inspect.Parameter.POSITIONAL_ONLY) for p in params]
            continue
        if raw == "*":
            kind = inspect.Parameter.KEYWORD_ONLY
            continue
        name, _, default = raw.partition("=")
        name = name.split()[-1]  # "str code" / "size_t size": Cython's C type first
        if name.startswith("**"):
            params.append(inspect.Parameter(name[2:], inspect.Parameter.VAR_KEYWORD))
        elif name.startswith("*"):
            params.append(inspect.Parameter(name[1:], inspect.Parameter.VAR_POSITIONAL))
            kind = inspect.Parameter.KEYWORD_ONLY
        else:
            default_value = inspect.Parameter.empty if not default else default.strip()
            params.append(inspect.Parameter(name, kind, default=default_value))
    return params


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _more_permissive(fake: list[inspect.Parameter], real: list[inspect.Parameter]) -> list[str]:
    """How a call the fake accepts could fail on CuPy (empty when none can)."""
    P = inspect.Parameter
    problems = []
    real_by_name = {p.name: p for p in real if p.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)}
    real_positional = [p for p in real if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    real_kinds = {p.kind for p in real}
    for index, p in enumerate(
        x for x in fake if x.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)
    ):
        if P.VAR_POSITIONAL in real_kinds and index >= len(real_positional):
            continue
        if index >= len(real_positional) or real_positional[index].name != p.name:
            at = real_positional[index].name if index < len(real_positional) else "nothing"
            problems.append(f"positional argument {index} is {p.name!r} here, {at!r} in CuPy")
    for p in fake:
        if p.kind is P.VAR_POSITIONAL and P.VAR_POSITIONAL not in real_kinds:
            problems.append(f"*{p.name} here, CuPy takes no extra positional arguments")
        elif p.kind is P.VAR_KEYWORD and P.VAR_KEYWORD not in real_kinds:
            problems.append(f"**{p.name} here, CuPy takes only its named keywords")
        elif p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY):
            twin = real_by_name.get(p.name)
            if twin is None and P.VAR_KEYWORD not in real_kinds:
                problems.append(f"keyword {p.name!r} is not one of CuPy's")
            elif twin is not None and twin.kind is P.POSITIONAL_ONLY:
                problems.append(f"{p.name!r} is positional-only in CuPy")
    fake_names = {p.name for p in fake}
    fake_takes_any = any(p.kind is P.VAR_KEYWORD for p in fake)
    for p in real:
        required = p.default is P.empty and p.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)
        if required and p.name not in fake_names and not fake_takes_any:
            problems.append(f"CuPy requires {p.name!r}, which the fake does not take")
        elif required and p.name in fake_names:
            if next(q for q in fake if q.name == p.name).default is not P.empty:
                problems.append(f"CuPy requires {p.name!r}, the fake gives it a default")
    return problems


def _compare_callable(where: str, fake: Any, real: Any, failures: list[str]) -> None:
    fake_params, real_params = _parameters(fake), _parameters(real)
    if fake_params is None:
        failures.append(f"{where}: the fake's callable has no signature to compare")
    if fake_params is None or real_params is None:  # some CuPy versions document none
        return
    failures.extend(f"{where}: {p}" for p in _more_permissive(fake_params, real_params))


def _public(module: types.ModuleType) -> dict[str, Any]:
    """The module's own public names (not what it imported: ``Path``, ``Any``, ``ctypes``)."""
    return {
        k: v
        for k, v in vars(module).items()
        if not k.startswith("_")
        and not isinstance(v, types.ModuleType)
        and getattr(v, "__module__", module.__name__) in (module.__name__, "numpy", None)
    }


# The fake's own helper classes stand for these CuPy classes; dunders the fake defines on purpose.
_TWINS = {
    "_Memory": ("cupy.cuda.MemoryPointer",),
    "_Kernel": ("cupy.RawKernel",),
    "_MemoryPool": ("cupy.cuda.MemoryPool", "cupy.cuda.PinnedMemoryPool"),  # both pools
    "_Attributes": ("cupy.cuda.runtime.PointerAttributes",),
}
_DUNDERS = ("__init__", "__call__", "__enter__", "__exit__", "__getitem__", "__setitem__",
            "__len__", "__int__", "__cuda_array_interface__")  # fmt: skip


def _resolve(cupy: Any, dotted: str) -> Any:
    obj = cupy
    for part in dotted.split(".")[1:]:
        obj = getattr(obj, part)
    return obj


def _compare_class(
    where: str, fake_cls: type, real_cls: type, failures: list[str], *, built_by_cupy: bool = False
) -> None:
    """``built_by_cupy``: radint never constructs the class (a kernel, a memory pointer)."""
    for name, attr in vars(fake_cls).items():
        if (name.startswith("_") and name not in _DUNDERS) or (
            built_by_cupy and name == "__init__"
        ):
            continue
        if not hasattr(real_cls, name):
            failures.append(f"{where}.{name}: CuPy's {real_cls.__name__} has no such attribute")
            continue
        if not callable(attr) or isinstance(attr, (property, type)):
            continue
        real_attr = getattr(real_cls, name)
        if name == "__init__" and _parameters(real_attr) is None:
            real_attr = real_cls  # a Cython class documents its constructor on the class
        _compare_callable(f"{where}.{name}", attr, real_attr, failures)


def _instance_attributes(cls: type, real_cls: type, failures: list[str]) -> None:
    try:
        instance = cls()
    except TypeError:
        return  # needs arguments: its attributes are checked through the class
    for name in vars(instance):
        if not name.startswith("_") and not hasattr(real_cls, name):
            failures.append(
                f"{cls.__name__}().{name}: CuPy's {real_cls.__name__} has no such attribute "
                "(make it private in the fake, or radint may come to rely on it)"
            )


def _surface_failures(
    public: dict[str, Any], cuda: Any, twins: dict[Any, tuple[str, ...]], cupy: Any
) -> list[str]:
    """Every way the fake's names (``public``: its cupy module's, ``cuda``: its cupy.cuda)
    and its helper classes (``twins``: class -> CuPy classes it stands for) accept more than
    CuPy."""
    import cupyx

    failures: list[str] = []
    for name, obj in public.items():
        if name == "empty_pinned":  # CuPy's lives in cupyx (the fake's cupyx re-exports it)
            real: Any = cupyx.empty_pinned
        elif not hasattr(cupy, name):
            failures.append(f"cupy.{name}: CuPy has no such name")
            continue
        else:
            real = getattr(cupy, name)
        if obj is real or (obj != obj and real != real):  # numpy's dtypes, nan
            continue
        if isinstance(obj, type):
            _compare_class(f"cupy.{name}", obj, real, failures)
        elif callable(obj):
            _compare_callable(f"cupy.{name}", obj, real, failures)
        else:
            failures.append(f"cupy.{name}: {obj!r} here, {real!r} in CuPy")
    for name, obj in vars(cuda).items():
        real = getattr(cupy.cuda, name, None)
        if real is None:
            failures.append(f"cupy.cuda.{name}: CuPy has no such name")
        elif name == "runtime":
            for fn_name, fn in vars(obj).items():
                real_fn = getattr(cupy.cuda.runtime, fn_name, None)
                if real_fn is None:
                    failures.append(f"cupy.cuda.runtime.{fn_name}: CuPy has no such function")
                else:
                    _compare_callable(f"cupy.cuda.runtime.{fn_name}", fn, real_fn, failures)
        elif isinstance(obj, type):
            _compare_class(f"cupy.cuda.{name}", obj, real, failures)
            _instance_attributes(obj, real, failures)
        else:
            _compare_callable(f"cupy.cuda.{name}", obj, real, failures)
    for fake_cls, real_names in twins.items():
        for real_name in real_names:
            real_cls = _resolve(cupy, real_name)
            _compare_class(fake_cls.__name__, fake_cls, real_cls, failures, built_by_cupy=True)
    return failures


def test_the_fake_cupy_accepts_no_call_the_real_cupy_refuses() -> None:
    cupy = _real_cupy()
    fake = _load_fake()
    public = {k: v for k, v in _public(fake).items() if k not in ("HARNESS_DIR", "cuda")}
    twins = {getattr(fake, name): real for name, real in _TWINS.items()}
    failures = _surface_failures(public, fake.cuda, twins, cupy)
    assert not failures, "the fake CuPy accepts what CuPy refuses:\n" + "\n".join(failures)


def test_the_launch_signature_fake_accepts_no_call_the_real_cupy_refuses() -> None:
    """The second stand-in, tests/test_gpu_launch_signatures.py's recorder of launches."""
    cupy = _real_cupy()
    from tests import test_gpu_launch_signatures as launches

    cp, _cupyx = launches.make_fake_cupy()
    public = {k: v for k, v in vars(cp).items() if not k.startswith("_") and k != "cuda"}
    twins = {
        launches._MemoryPointer: ("cupy.cuda.MemoryPointer",),
        launches.KernelRecorder: ("cupy.RawKernel",),
    }
    failures = _surface_failures(public, cp.cuda, twins, cupy)
    assert not failures, "the launch fake accepts what CuPy refuses:\n" + "\n".join(failures)


def test_the_surface_check_catches_a_fake_more_permissive_than_cupy() -> None:
    """The comparison itself finds each kind of mismatch (a misspelt keyword, a positional
    argument in another place, extra keywords, a default where CuPy requires the value)."""
    P = inspect.Parameter

    def params(text: str) -> list[inspect.Parameter]:
        result = _parameters(types.SimpleNamespace(__doc__=f"f({text})"))  # as Cython writes it
        assert result is not None
        return result

    real = params("shape, fill_value, dtype=None, order='C'")
    assert _more_permissive(params("shape, fill_value, dtype=None"), real) == []
    assert _more_permissive(params("shape, value, dtype=None"), real)  # misspelt keyword
    assert _more_permissive(params("shape, fill_value, order='C'"), real)  # order at index 2
    assert _more_permissive(params("shape, fill_value, *, order='C'"), real) == []
    assert _more_permissive(params("shape, fill_value, **kwargs"), real)
    assert _more_permissive(params("shape, fill_value=0"), real)  # CuPy requires fill_value
    assert _more_permissive(params("shape"), real)  # CuPy requires fill_value
    cython = params("self, str code=None, *, tuple options=(), str backend='nvrtc'")
    assert [(p.name, p.kind) for p in cython] == [
        ("code", P.POSITIONAL_OR_KEYWORD),
        ("options", P.KEYWORD_ONLY),
        ("backend", P.KEYWORD_ONLY),
    ]
    assert _more_permissive(params("code='', options=()"), cython)  # options by position
    assert _more_permissive(params("code='', *, options=()"), cython) == []
