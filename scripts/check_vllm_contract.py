#!/usr/bin/env python
"""Check our vLLM adapter against the vLLM wheel the `vllm` extra pins, without installing or importing vLLM.

vLLM needs CUDA and its own torch, so on our machines nothing can import it; its wheel is still plain Python. This
script downloads the pinned wheel once (pip download, no dependencies, into a cache folder), opens it as a zip and
reads the sources with `ast`. What our adapter (localjudge/judge/vllm_backend.py) uses is read with `ast` too, so a
name added to the adapter is checked without touching this script:

- the keyword (and positional) arguments of every call on a vLLM class or method: `vllm.LLM(...)` (its **kwargs go
  to EngineArgs, whose dataclass fields are read), `LLM.chat(...)`, `vllm.SamplingParams(...)` (a msgspec Struct:
  its annotated fields), `vllm.sampling_params.StructuredOutputsParams(...)` (a dataclass);
- the chat content parts the adapter builds (`{"type": "image_pil", "image_pil": ...}`): the type must be a key of
  vLLM's content-part parser table that vLLM also handles, and the other keys must be read by that type's parser;
- the attributes read off what `LLM.chat` returns (RequestOutput, its CompletionOutputs), followed through the
  return and attribute annotations, and the finish_reason strings compared against.

It prints a table of name -> where it was found and exits 0 when everything was found, 1 naming every missing one,
2 when the wheel could not be had. --write-standin-signatures writes the signatures the tests' vLLM stand-in
(tests/vllm_standin.py) enforces, from the same reading.

    python scripts/check_vllm_contract.py [--wheel PATH] [--cache DIR] [--adapter PATH] [--json]
                                          [--write-standin-signatures PATH]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADAPTER = ROOT / "localjudge" / "judge" / "vllm_backend.py"
# The wheel is pure Python for what we read; fixing the platform makes the download the same on any machine.
DOWNLOAD_PLATFORM = ("--platform", "manylinux_2_28_x86_64", "--python-version", "3.12", "--implementation", "cp")
# Where vLLM keeps the chat content-part parsers: entrypoints/chat_utils.py up to ~0.2x, renderers/chat_utils/ since.
CHAT_UTILS = re.compile(r"^vllm/(?:.+/)?chat_utils(?:\.py|/[^/]+\.py)$")
PARSER_TABLE = "MM_PARSER_MAP"
FINISH_REASONS = ("vllm/v1/engine/__init__.py", "FINISH_REASON_STRINGS")
SEQUENCE_TYPES = {"list", "List", "Sequence", "GenericSequence", "Iterable", "MutableSequence"}


def pinned_version(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The one vLLM version the `vllm` extra pins: the version this script checks."""
    extra = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]["vllm"]
    pins = [m.group(1) for spec in extra if (m := re.fullmatch(r"vllm\s*==\s*([\w.]+)", spec.strip()))]
    if len(pins) != 1:
        raise SystemExit(f"pyproject.toml's vllm extra must pin one version (vllm==X), not {extra}")
    return pins[0]


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "localjudge" / "wheels"


def obtain_wheel(version: str, cache: Path) -> Path:
    """The cached wheel of vllm==version, downloaded (not installed) when the cache has none."""
    found = sorted(cache.glob(f"vllm-{version}-*.whl"))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", f"vllm=={version}", "--no-deps",
                        "--only-binary=:all:", *DOWNLOAD_PLATFORM, "--quiet", "-d", str(cache)], check=True)
        found = sorted(cache.glob(f"vllm-{version}-*.whl"))
    if not found:
        raise FileNotFoundError(f"pip download left no vllm-{version}-*.whl in {cache}")
    return found[0]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Sources:
    """The wheel's files: a wheel or any zip holding some of its members, or a directory laid out the same way.
    Records every member it reads, so a test can rebuild a small zip with just those."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if self.path.is_dir():
            self._zip = None
            self.names = sorted(str(p.relative_to(self.path)).replace(os.sep, "/")
                                for p in self.path.rglob("*") if p.is_file())
        else:
            self._zip = zipfile.ZipFile(self.path)
            self.names = self._zip.namelist()
        self._present = set(self.names)
        self._trees: dict[str, ast.Module | None] = {}
        self.read_members: list[str] = []

    def read(self, member: str) -> str | None:
        if member not in self._present:
            return None
        if member not in self.read_members:
            self.read_members.append(member)
        if self._zip is None:
            return (self.path / member).read_text(encoding="utf-8")
        return self._zip.read(member).decode("utf-8")

    def tree(self, member: str) -> ast.Module | None:
        if member not in self._trees:
            text = self.read(member)
            self._trees[member] = None if text is None else ast.parse(text, filename=member)
        return self._trees[member]

    def module_file(self, dotted: str) -> str | None:
        base = dotted.replace(".", "/")
        return next((m for m in (f"{base}.py", f"{base}/__init__.py") if m in self._present), None)

    def version(self) -> str | None:
        metadata = next((n for n in self.names if re.fullmatch(r"vllm-[^/]+\.dist-info/METADATA", n)), None)
        text = self.read(metadata) if metadata else None
        match = re.search(r"^Version: (\S+)$", text or "", re.M)
        return match.group(1) if match else None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_statements(body: list[ast.stmt], runtime: bool):
    """Top-level statements, into if/try blocks; `if TYPE_CHECKING:` bodies only for annotations (runtime=False)."""
    for node in body:
        if isinstance(node, ast.If):
            if not (runtime and _is_type_checking(node.test)):
                yield from _module_statements(node.body, runtime)
            yield from _module_statements(node.orelse, runtime)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                yield from _module_statements(block, runtime)
        else:
            yield node


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _literal(node: ast.expr | None):
    """A default's value when it is a JSON-able literal; `...` (Ellipsis) when it is computed."""
    try:
        value = ast.literal_eval(node)
        json.dumps(value)
        return value
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return ...


@dataclass
class Signature:
    """The parameters one vLLM callable accepts, as read from its source."""
    owner: str  # "LLM.__init__", "SamplingParams"
    source: str
    noun: str = "parameter"  # or "field (dataclass)": how the table names an accepted name
    positional_only: list[str] = field(default_factory=list)
    positional: list[str] = field(default_factory=list)
    var_positional: bool = False
    keyword_only: list[str] = field(default_factory=list)
    var_keyword: bool = False
    required: list[str] = field(default_factory=list)
    defaults: dict = field(default_factory=dict)  # literal defaults only
    forwards_to: Signature | None = None  # where **kwargs go (LLM.__init__ -> EngineArgs)
    forwarded_explicitly: set[str] = field(default_factory=set)  # names that call already passes

    @property
    def names(self) -> list[str]:
        return self.positional_only + self.positional + self.keyword_only

    def as_json(self) -> dict:
        return {"source": self.source, "positional_only": self.positional_only, "positional": self.positional,
                "var_positional": self.var_positional, "keyword_only": self.keyword_only,
                "var_keyword_to": (self.forwards_to.owner if self.forwards_to else
                                   "unknown" if self.var_keyword else None),
                "required": self.required, "defaults": self.defaults}


@dataclass
class ClassInfo:
    reader: Reader
    module: str  # the member path: vllm/outputs.py
    node: ast.ClassDef

    @property
    def name(self) -> str:
        return self.node.name

    def _decorated(self, name: str):
        for decorator in self.node.decorator_list:
            target = decorator.func if isinstance(decorator, ast.Call) else decorator
            if _dotted(target).split(".")[-1] == name:
                return decorator
        return None

    def bases(self) -> list[ClassInfo]:
        resolved = []
        for base in self.node.bases:
            if isinstance(base, ast.Name) and (info := self.reader.resolve(self.module, base.id, runtime=False)):
                resolved.append(info)
        return resolved

    @property
    def kind(self) -> str | None:
        if self._decorated("dataclass"):
            return "dataclass"
        if any(_dotted(base).split(".")[-1] == "Struct" for base in self.node.bases):
            return "msgspec.Struct"
        return next((base.kind for base in self.bases() if base.kind), None)

    def _own_functions(self) -> dict[str, ast.FunctionDef]:
        return {n.name: n for n in self.node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}

    def method(self, name: str) -> tuple[ClassInfo, ast.FunctionDef] | None:
        if name in (own := self._own_functions()):
            return self, own[name]
        return next((found for base in self.bases() if (found := base.method(name))), None)

    def fields(self) -> list[tuple[str, ast.AnnAssign, bool]]:
        """(name, declaration, keyword-only) of a dataclass's or Struct's __init__ fields, bases' first."""
        inherited = [f for base in self.bases() if base.kind for f in base.fields()]
        decorator = self._decorated("dataclass")
        class_keywords = {k.arg: k.value for k in self.node.keywords}
        if isinstance(decorator, ast.Call):
            class_keywords.update({k.arg: k.value for k in decorator.keywords})
        keyword_only = _literal(class_keywords.get("kw_only")) is True
        own = []
        for node in self.node.body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            annotation = _dotted(node.annotation.value if isinstance(node.annotation, ast.Subscript)
                                 else node.annotation).split(".")[-1]
            if annotation == "ClassVar":
                continue
            if annotation == "KW_ONLY":  # dataclasses' sentinel: the fields after it are keyword-only
                keyword_only = True
                continue
            options = ({k.arg: k.value for k in node.value.keywords}
                       if isinstance(node.value, ast.Call) and _dotted(node.value.func).split(".")[-1] == "field"
                       else {})
            if _literal(options.get("init")) is False:
                continue
            own.append((node.target.id, node, keyword_only or _literal(options.get("kw_only")) is True))
        names = {name for name, _, _ in own}
        return [f for f in inherited if f[0] not in names] + own

    def init_signature(self) -> Signature | None:
        """Its own __init__; else its dataclass or Struct fields; else an inherited __init__."""
        if "__init__" in self._own_functions():
            return self.reader.signature(self, self._own_functions()["__init__"], owner=f"{self.name}.__init__")
        if self.kind is None:
            found = self.method("__init__")
            return self.reader.signature(*found, owner=f"{found[0].name}.__init__") if found else None
        signature = Signature(self.name, self.module, noun=f"field ({self.kind})")
        for name, node, keyword_only in self.fields():
            (signature.keyword_only if keyword_only else signature.positional).append(name)
            default = node.value
            if isinstance(default, ast.Call) and _dotted(default.func).split(".")[-1] == "field":
                options = {k.arg: k.value for k in default.keywords}
                if "default" in options:
                    default = options["default"]
                elif "default_factory" not in options:
                    default = None
            if default is None:
                signature.required.append(name)
            elif (value := _literal(default)) is not ...:
                signature.defaults[name] = value
        return signature

    def attribute(self, name: str) -> tuple[str, ast.expr | None, ClassInfo] | None:
        """(how it is declared, its annotation, the class declaring it) of an instance attribute or method."""
        for node in self.node.body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
                return "field" if self.kind else "class attribute", node.annotation, self
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                return "class attribute", None, self
        functions = self._own_functions()
        if name in functions:
            function = functions[name]
            is_property = any(_dotted(d).split(".")[-1] in ("property", "cached_property")
                              for d in function.decorator_list)
            return ("property", function.returns, self) if is_property else ("method", None, self)
        for function in functions.values():
            parameters = {a.arg: a.annotation for a in function.args.args + function.args.kwonlyargs}
            for node in ast.walk(function):
                targets = (node.targets if isinstance(node, ast.Assign)
                           else [node.target] if isinstance(node, ast.AnnAssign) else [])
                for target in targets:
                    if (isinstance(target, ast.Attribute) and target.attr == name
                            and isinstance(target.value, ast.Name) and target.value.id == "self"):
                        annotation = node.annotation if isinstance(node, ast.AnnAssign) else (
                            parameters.get(node.value.id) if isinstance(node.value, ast.Name) else None)
                        return f"attribute set in {function.name}", annotation, self
        return next((found for base in self.bases() if (found := base.attribute(name))), None)


class Reader:
    """Finds classes, signatures and annotations in the wheel's sources."""

    def __init__(self, sources: Sources):
        self.sources = sources

    def _absolute(self, module: str, target: str | None, level: int) -> str:
        if not level:
            return target or ""
        package = module.split("/")[:-1]  # a/b/c.py and a/b/__init__.py both sit in package a.b
        package = package[:len(package) - level + 1]
        return ".".join(package + ([target] if target else []))

    def resolve(self, module: str, name: str, runtime: bool, depth: int = 0) -> ClassInfo | None:
        """The class `name` means in `module` (a member path): defined there, imported, or a lazy export."""
        found = self.resolve_with_route(module, name, runtime, depth)
        return found[0] if found else None

    def resolve_with_route(self, module: str, name: str, runtime: bool, depth: int = 0):
        tree = self.sources.tree(module) if depth < 8 else None
        if tree is None:
            return None
        for node in _module_statements(tree.body, runtime):
            if isinstance(node, ast.ClassDef) and node.name == name:
                return ClassInfo(self, module, node), [module]
        for node in _module_statements(tree.body, runtime):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if (alias.asname or alias.name) == name:
                        target = self.sources.module_file(self._absolute(module, node.module, node.level))
                        found = target and self.resolve_with_route(target, alias.name, runtime, depth + 1)
                        if found:
                            return found[0], [module] + found[1]
            # vllm/__init__.py exports lazily: MODULE_ATTRS = {"LLM": ".entrypoints.llm:LLM", ...}
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
                for key, value in zip(node.value.keys, node.value.values):
                    if (isinstance(key, ast.Constant) and key.value == name and isinstance(value, ast.Constant)
                            and isinstance(value.value, str) and ":" in value.value):
                        target_module, attribute = value.value.split(":")
                        level = len(target_module) - len(target_module.lstrip("."))
                        target = self.sources.module_file(self._absolute(module, target_module[level:], level))
                        found = target and self.resolve_with_route(target, attribute, runtime, depth + 1)
                        if found:
                            table = node.targets[0].id if isinstance(node, ast.Assign) else node.target.id
                            return found[0], [f"{module} ({table})"] + found[1]
        return None

    def signature(self, owner_class: ClassInfo, function: ast.FunctionDef, owner: str) -> Signature:
        arguments = function.args
        signature = Signature(owner, owner_class.module)
        positional = arguments.posonlyargs + arguments.args
        is_method = not any(_dotted(d) == "staticmethod" for d in function.decorator_list)
        skip = 1 if is_method and positional else 0  # self / cls
        defaults = [None] * (len(positional) - len(arguments.defaults)) + list(arguments.defaults)
        for index, (argument, default) in enumerate(zip(positional, defaults)):
            if index < skip:
                continue
            target = signature.positional_only if argument in arguments.posonlyargs else signature.positional
            target.append(argument.arg)
            self._default(signature, argument.arg, default)
        for argument, default in zip(arguments.kwonlyargs, arguments.kw_defaults):
            signature.keyword_only.append(argument.arg)
            self._default(signature, argument.arg, default)
        signature.var_positional = arguments.vararg is not None
        signature.var_keyword = arguments.kwarg is not None
        if signature.var_keyword:
            self._find_forwarding(signature, owner_class, function, arguments.kwarg.arg)
        return signature

    @staticmethod
    def _default(signature: Signature, name: str, default: ast.expr | None) -> None:
        if default is None:
            signature.required.append(name)
        elif (value := _literal(default)) is not ...:
            signature.defaults[name] = value

    def _find_forwarding(self, signature: Signature, owner_class: ClassInfo, function: ast.FunctionDef,
                         kwargs_name: str) -> None:
        """Where the function passes its **kwargs on: the class it calls with `**kwargs` (LLM -> EngineArgs)."""
        for node in ast.walk(function):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            if any(k.arg is None and isinstance(k.value, ast.Name) and k.value.id == kwargs_name
                   for k in node.keywords):
                target = self.resolve(owner_class.module, node.func.id, runtime=False)
                target_signature = target and target.init_signature()
                if target_signature:
                    signature.forwards_to = target_signature
                    signature.forwarded_explicitly = {k.arg for k in node.keywords if k.arg}
                    return

    def annotation_type(self, module: str, node: ast.expr | None):
        """A type the flow below follows: ("instance", ClassInfo), ("list", element type), or None."""
        if node is None:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                return self.annotation_type(module, ast.parse(node.value, mode="eval").body)
            except SyntaxError:
                return None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):  # X | None
            return self.annotation_type(module, node.left) or self.annotation_type(module, node.right)
        if isinstance(node, ast.Subscript):
            base = _dotted(node.value).split(".")[-1]
            if base in SEQUENCE_TYPES:
                element = self.annotation_type(module, node.slice)
                return ("list", element) if element else None
            if base == "Optional":
                return self.annotation_type(module, node.slice)
            return None
        if isinstance(node, ast.Name):
            info = self.resolve(module, node.id, runtime=False)
            return ("instance", info) if info else None
        return None


@dataclass
class Use:
    name: str  # what the adapter uses: "LLM(max_model_len=)", 'content part "image_pil"'
    where: str | None  # where vLLM has it; None when missing
    problem: str = ""


class AdapterFlow:
    """Walks the adapter's code, following which values are vLLM modules, classes and instances, and checks every
    call, attribute and comparison on them against the wheel."""

    def __init__(self, reader: Reader, adapter: Path):
        self.reader = reader
        self.tree = ast.parse(adapter.read_text(), filename=str(adapter))
        self.uses: list[Use] = []
        self.self_attributes: dict[str, object] = {}

    def use(self, name: str, where: str | None, problem: str = "") -> None:
        if not any(u.name == name and u.where == where for u in self.uses):
            self.uses.append(Use(name, where, problem))

    def run(self) -> list[Use]:
        self.block(self.tree.body, {})
        self.content_parts()
        return self.uses

    # --- statements ---
    def block(self, statements: list[ast.stmt], env: dict) -> None:
        for statement in statements:
            self.statement(statement, env)

    def statement(self, node: ast.stmt, env: dict) -> None:
        if isinstance(node, ast.ClassDef):
            self.self_attributes = {}
            self.block(node.body, env)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            self.block(node.body, dict(env))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "vllm":
                    self.module_use(alias.name)
                    # `import vllm.x` binds vllm; `import vllm.x as y` binds y to vllm.x
                    env[alias.asname or "vllm"] = ("module", alias.name if alias.asname else "vllm")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "vllm" and not node.level:
            for alias in node.names:
                env[alias.asname or alias.name] = self.module_attribute(node.module, alias.name)
        elif isinstance(node, ast.Assign):
            value = self.expression(node.value, env)
            for target in node.targets:
                self.bind(target, value, env)
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            self.bind(node.target, self.expression(node.value, env), env)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            iterated = self.expression(node.iter, env)
            self.bind(node.target, iterated[1] if iterated and iterated[0] == "list" else None, env)
            self.block(node.body, env)
            self.block(node.orelse, env)
        else:
            self.generic(node, env)

    def generic(self, node: ast.AST, env: dict) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                self.statement(child, env)
            elif isinstance(child, ast.expr):
                self.expression(child, env)
            else:
                self.generic(child, env)

    def bind(self, target: ast.expr, value, env: dict) -> None:
        if isinstance(target, ast.Name):
            env[target.id] = value
        elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
            self.self_attributes[target.attr] = value
        else:
            self.generic(target, env)

    # --- expressions ---
    def expression(self, node: ast.expr, env: dict):
        if isinstance(node, ast.Name):
            return env.get(node.id)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                return self.self_attributes.get(node.attr)
            return self.attribute(self.expression(node.value, env), node.attr)
        if isinstance(node, ast.Call):
            return self.call(node, env)
        if isinstance(node, ast.Subscript):
            container = self.expression(node.value, env)
            self.expression(node.slice, env)
            return container[1] if container and container[0] == "list" else None
        if isinstance(node, ast.BoolOp):
            return next((t for t in [self.expression(v, env) for v in node.values] if t), None)
        if isinstance(node, (ast.ListComp, ast.GeneratorExp, ast.SetComp)):
            scope = dict(env)
            for generator in node.generators:
                iterated = self.expression(generator.iter, scope)
                self.bind(generator.target, iterated[1] if iterated and iterated[0] == "list" else None, scope)
                for condition in generator.ifs:
                    self.expression(condition, scope)
            element = self.expression(node.elt, scope)
            return ("list", element) if element and isinstance(node, ast.ListComp) else None
        if isinstance(node, ast.Compare):
            self.comparison(node, env)
            return None
        self.generic(node, env)
        return None

    def module_use(self, dotted: str) -> str | None:
        member = self.reader.sources.module_file(dotted)
        self.use(f"module {dotted}", member, "" if member else "no such module in the wheel")
        return member

    def module_attribute(self, dotted: str, name: str):
        member = self.reader.sources.module_file(dotted)
        found = member and self.reader.resolve_with_route(member, name, runtime=True)
        if not found and self.reader.sources.module_file(f"{dotted}.{name}"):
            self.module_use(f"{dotted}.{name}")
            return "module", f"{dotted}.{name}"
        if not found:
            self.use(f"{dotted}.{name}", None, f"no class {name} reachable from module {dotted}")
            return None
        self.use(f"{dotted}.{name}", " -> ".join(found[1]))
        return "class", found[0]

    def attribute(self, value, name: str):
        if not value:
            return None
        if value[0] == "module":
            return self.module_attribute(value[1], name)
        if value[0] != "instance":
            return None
        info: ClassInfo = value[1]
        found = info.attribute(name)
        if not found:
            self.use(f"{info.name}.{name}", None, f"{info.name} ({info.module}) has no attribute {name}")
            return None
        how, annotation, owner = found
        self.use(f"{info.name}.{name}", f"{owner.module}: {owner.name} {how}")
        if how == "method":
            return "method", owner, name
        return self.reader.annotation_type(owner.module, annotation)

    def call(self, node: ast.Call, env: dict):
        function = node.func
        if (isinstance(function, ast.Attribute) and function.attr == "import_module"
                and _dotted(function.value) == "importlib" and node.args
                and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).split(".")[0] == "vllm"):
            self.module_use(node.args[0].value)
            return "module", node.args[0].value
        callee = self.expression(function, env)
        for argument in node.args:
            self.expression(argument, env)
        for keyword in node.keywords:
            self.expression(keyword.value, env)
        if callee and callee[0] == "class":
            info: ClassInfo = callee[1]
            signature = info.init_signature()
            self.check_call(info.name, signature, node, f"cannot read {info.name}'s parameters")
            return "instance", info
        if callee and callee[0] == "method":
            _, owner, name = callee
            owner_and_function = owner.method(name)
            signature = self.reader.signature(*owner_and_function, owner=f"{owner.name}.{name}")
            self.check_call(f"{owner.name}.{name}", signature, node, "")
            return self.reader.annotation_type(owner_and_function[0].module, owner_and_function[1].returns)
        return None

    def check_call(self, label: str, signature: Signature | None, node: ast.Call, unreadable: str) -> None:
        if signature is None:
            self.use(f"{label}(...)", None, unreadable)
            return
        where = f"{signature.source}: {signature.owner}"
        passed = []
        positional = signature.positional_only + signature.positional
        for index, argument in enumerate(node.args):
            if isinstance(argument, ast.Starred):
                return  # *args: which names they fill is not known here
            if index < len(positional):
                passed.append(positional[index])
                self.use(f"{label}(positional {index + 1})", f"{where} {signature.noun} {positional[index]}")
            elif signature.var_positional:
                self.use(f"{label}(positional {index + 1})", f"{where} *args")
            else:
                self.use(f"{label}(positional {index + 1})", None, f"{signature.owner} takes {len(positional)}")
        for keyword in node.keywords:
            if keyword.arg is None:
                return  # **mapping: its names are not known here
            passed.append(keyword.arg)
            name = f"{label}({keyword.arg}=)"
            if keyword.arg in signature.positional + signature.keyword_only:
                self.use(name, f"{where} {signature.noun}")
            elif signature.forwards_to and keyword.arg in signature.forwards_to.names and (
                    keyword.arg not in signature.forwarded_explicitly):
                target = signature.forwards_to
                self.use(name, f"{target.source}: {target.owner} {target.noun}, through {signature.owner}'s **kwargs")
            else:
                if signature.forwards_to:
                    problem = (f"neither {signature.owner} parameter nor {signature.forwards_to.owner} "
                               f"{signature.forwards_to.noun} (where its **kwargs go)")
                elif signature.var_keyword:
                    problem = f"not {signature.owner} parameter, and where its **kwargs go is unknown"
                else:
                    problem = f"not {signature.owner} {signature.noun}"
                self.use(name, None, problem)
        for name in signature.required:
            if name not in passed:
                self.use(f"{label}(... {name} ...)", None, f"{signature.owner} requires {name}, not passed")

    def comparison(self, node: ast.Compare, env: dict) -> None:
        self.expression(node.left, env)
        for comparator in node.comparators:
            self.expression(comparator, env)
        # finish_reason is compared with vLLM's strings ("length"): a renamed string would go unnoticed
        if isinstance(node.left, ast.Attribute) and node.left.attr == "finish_reason":
            reasons = finish_reasons(self.reader.sources)
            for comparator in node.comparators:
                if isinstance(comparator, ast.Constant) and isinstance(comparator.value, str):
                    name = f"finish_reason {comparator.value!r}"
                    if reasons and comparator.value in reasons:
                        self.use(name, f"{FINISH_REASONS[0]}: {FINISH_REASONS[1]}")
                    else:
                        self.use(name, None, f"not in {FINISH_REASONS[1]} ({FINISH_REASONS[0]})")

    def content_parts(self) -> None:
        """The chat content parts the adapter builds: dicts in the list under a message's "content"."""
        table = content_part_table(self.reader.sources)
        for node in ast.walk(self.tree):
            if not isinstance(node, ast.Dict):
                continue
            for key, value in zip(node.keys, node.values):
                if not (isinstance(key, ast.Constant) and key.value == "content" and isinstance(value, ast.List)):
                    continue
                for part in value.elts:
                    if isinstance(part, ast.Dict):
                        self.content_part(part, table)

    def content_part(self, part: ast.Dict, table: dict | None) -> None:
        keys = {k.value: v for k, v in zip(part.keys, part.values) if isinstance(k, ast.Constant)}
        part_type = keys.get("type")
        if not (isinstance(part_type, ast.Constant) and isinstance(part_type.value, str)):
            return
        part_type = part_type.value
        name = f"content part {part_type!r}"
        if table is None:
            self.use(name, None, f"no content-part parser table ({PARSER_TABLE}) found in vLLM's chat_utils")
            return
        entry = table["parts"].get(part_type)
        if entry is None:
            self.use(name, None, f"not a key of {PARSER_TABLE} ({table['source']})")
            return
        if not entry["handled_in"]:
            self.use(name, None, f"a {PARSER_TABLE} key that {table['source']} never compares a part type with")
            return
        self.use(name, f"{table['source']}: {PARSER_TABLE} key, handled in {', '.join(entry['handled_in'])}")
        for key in keys:
            if key == "type":
                continue
            if key in entry["reads"]:
                self.use(f"content part {part_type!r} key {key!r}",
                         f"{table['source']}: read by {PARSER_TABLE}[{part_type!r}]")
            else:
                self.use(f"content part {part_type!r} key {key!r}", None,
                         f"{PARSER_TABLE}[{part_type!r}] reads {sorted(entry['reads'])}")


def finish_reasons(sources: Sources) -> list[str] | None:
    member, name = FINISH_REASONS
    tree = sources.tree(member)
    for node in _module_statements(tree.body if tree else [], runtime=True):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            value = _literal(node.value)
            return list(value) if value is not ... else None
    return None


def _strings(node: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _part_keys_read(parser: ast.expr) -> set[str]:
    """The part's own keys a parser reads: part.get("image_pil"), not nested ones (.get("image_url", {}).get("url"))."""
    def is_get(node):
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and node.args and isinstance(node.args[0], ast.Constant))
    return {call.args[0].value for call in ast.walk(parser) if is_get(call) and not is_get(call.func.value)}


def content_part_table(sources: Sources) -> dict | None:
    """vLLM's chat content-part parsers: {"source", "parts": {type: {"reads": keys, "handled_in": functions}}}.
    A part type is accepted when it is a key of the parser table (its parser reads the part's keys) and the code
    that turns parsed parts into text and media compares part types with it (`part_type == "image_pil"`,
    `part_type in TEXT_PART_TYPES`)."""
    for member in sorted(n for n in sources.names if CHAT_UTILS.match(n)):
        tree = sources.tree(member)
        table = None
        constants: dict[str, set[str]] = {}
        for node in _module_statements(tree.body, runtime=True):
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, ast.AnnAssign) else [])
            for target in targets:
                if isinstance(target, ast.Name) and node.value is not None:
                    constants[target.id] = _strings(node.value)
                    if target.id == PARSER_TABLE and isinstance(node.value, ast.Dict):
                        table = node.value
        if table is None:
            continue
        parts = {}
        for key, parser in zip(table.keys, table.values):
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                parts[key.value] = {"reads": sorted(_part_keys_read(parser)), "handled_in": []}
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for compare in ast.walk(function):
                if not (isinstance(compare, ast.Compare) and isinstance(compare.left, ast.Name)):
                    continue
                compared = set()
                for op, comparator in zip(compare.ops, compare.comparators):
                    # `part_type in MM_PARSER_MAP` is the dispatch itself, not a handling of any one type
                    if isinstance(comparator, ast.Name) and comparator.id == PARSER_TABLE:
                        continue
                    if isinstance(op, (ast.Eq, ast.In)):
                        compared |= (constants.get(comparator.id, set()) if isinstance(comparator, ast.Name)
                                     else _strings(comparator))
                for part_type in compared & parts.keys():
                    if function.name not in parts[part_type]["handled_in"]:
                        parts[part_type]["handled_in"].append(function.name)
        return {"source": member, "parts": parts}
    return None


@dataclass
class Report:
    wheel: Path
    version: str | None
    uses: list[Use]
    read_members: list[str]

    @property
    def missing(self) -> list[Use]:
        return [u for u in self.uses if u.where is None]


# What the adapter must be seen using: a refactor this reading does not follow must fail, not pass vacuously.
EXPECTED = ("vllm.LLM", "LLM.chat", "vllm.SamplingParams", "vllm.sampling_params.StructuredOutputsParams",
            "RequestOutput.", "CompletionOutput.", "content part")


def check(wheel: Path, adapter: Path = ADAPTER) -> Report:
    sources = Sources(wheel)
    uses = AdapterFlow(Reader(sources), adapter).run()
    for expected in EXPECTED:
        if not any(u.name.startswith(expected) for u in uses):
            uses.append(Use(expected, None, "the adapter was not seen using it: update this checker's reading"))
    return Report(Path(wheel), sources.version(), uses, sources.read_members)


def standin_signatures(wheel: Path) -> dict:
    """What tests/vllm_standin.py enforces, read from the wheel: the parameters of LLM (+ EngineArgs), LLM.chat,
    SamplingParams and StructuredOutputsParams, the accepted content parts, the output attributes."""
    sources = Sources(wheel)
    reader = Reader(sources)

    def exported(module: str, name: str) -> ClassInfo:
        found = reader.resolve(sources.module_file(module) or "", name, runtime=True)
        if found is None:
            raise SystemExit(f"{module}.{name} not found in {wheel}")
        return found

    llm = exported("vllm", "LLM")
    llm_init = llm.init_signature()
    chat = reader.signature(*llm.method("chat"), owner="LLM.chat")
    table = content_part_table(sources) or {"parts": {}}
    outputs = {}
    for name in ("RequestOutput", "CompletionOutput"):
        info = exported("vllm", name)
        names = [f[0] for f in info.fields()] if info.kind else []
        init = info.method("__init__")
        for node in ast.walk(init[1]) if init and not info.kind else []:
            targets = node.targets if isinstance(node, ast.Assign) else []
            names += [t.attr for t in targets if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                      and t.value.id == "self" and t.attr not in names]
        outputs[name] = {"source": info.module, "attributes": names}
    wheel = Path(wheel)
    return {
        "generated_by": "scripts/check_vllm_contract.py --write-standin-signatures (do not edit by hand)",
        "vllm_version": sources.version(),
        "wheel": wheel.name,
        "wheel_sha256": sha256(wheel),
        "note": "defaults: literal ones only; a parameter absent from both required and defaults has a computed one",
        "LLM": llm_init.as_json(),
        "EngineArgs": llm_init.forwards_to.as_json() if llm_init.forwards_to else None,
        "LLM.chat": chat.as_json(),
        "SamplingParams": exported("vllm", "SamplingParams").init_signature().as_json(),
        "StructuredOutputsParams": exported("vllm.sampling_params", "StructuredOutputsParams").init_signature()
        .as_json(),
        "content_parts": {"source": table.get("source"),
                          "reads": {t: e["reads"] for t, e in table["parts"].items() if e["handled_in"]}},
        **outputs,
        "finish_reasons": finish_reasons(sources),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, help="a vLLM wheel, or a zip/directory holding the members read")
    parser.add_argument("--cache", type=Path, default=None, help="where the pinned wheel is downloaded "
                                                                 "(default ~/.cache/localjudge/wheels)")
    parser.add_argument("--adapter", type=Path, default=ADAPTER, help="the adapter to check (default ours)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--write-standin-signatures", type=Path, metavar="PATH",
                        help="also write the signatures tests/vllm_standin.py enforces")
    args = parser.parse_args(argv)
    if args.wheel is None:
        try:
            args.wheel = obtain_wheel(pinned_version(), args.cache or default_cache())
        except (OSError, subprocess.CalledProcessError) as error:
            print(f"could not obtain the vLLM wheel: {error}", file=sys.stderr)
            return 2
    elif not args.wheel.exists():
        print(f"no such wheel: {args.wheel}", file=sys.stderr)
        return 2
    report = check(args.wheel, args.adapter)
    if args.write_standin_signatures:
        args.write_standin_signatures.write_text(json.dumps(standin_signatures(args.wheel), indent=1) + "\n")
    if args.json:
        print(json.dumps({"wheel": str(report.wheel), "vllm_version": report.version,
                          "uses": [u.__dict__ for u in report.uses],
                          "missing": [u.name for u in report.missing]}, indent=1))
    else:
        width = max(len(u.name) for u in report.uses)
        print(f"vLLM {report.version} from {report.wheel}, as used by {args.adapter.name}:")
        for use in report.uses:
            print(f"  {use.name:<{width}}  {use.where or 'MISSING: ' + use.problem}")
        if report.missing:
            print(f"MISSING in vLLM {report.version}: " + ", ".join(u.name for u in report.missing))
        else:
            print(f"all {len(report.uses)} names found")
    return 1 if report.missing else 0


if __name__ == "__main__":
    sys.exit(main())
