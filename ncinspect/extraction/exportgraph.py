"""The graph half of the torch.export audit: what one serialized program (`models/NAME.json`)
may hold for `torch.export.load` to deserialize it without `--trust-code`.

Owns `audit_program_json(doc)` (what in one program is off the allowlists; [] when nothing is)
and the allowlists it applies, mirroring torch 2.13's `torch/_export/serde/serialize.py`:
operators of `ATEN_OPS` and `SYM_OPS` (pure tensor and shape arithmetic), argument kinds of
`_ARG_KINDS`, input and output spec kinds, program fields and node metadata torch.export.save
writes, identifier names and dotted module paths (`fqn_ok`; they become Python source in the
GraphModule), plain-arithmetic shape expressions (`expr_ok`; torch `sympify`s them), no guard
code (torch `exec`s it), builtin containers only in input/output specs. The archive around the
programs (container, members, payloads, sample inputs) is `exportaudit`'s.

Never opens a file, and never imports, unpickles, looks up or runs anything a program names: it
judges a JSON document already parsed.
"""

from __future__ import annotations

import json
import keyword
import re
from typing import Any

# Pure tensor computations that real exports of MLPs, CNNs with BatchNorm, transformer encoder
# layers and residual blocks emit in torch 2.13, before and after run_decompositions(), plus their
# close relatives. Nothing that reads or writes files, prints, draws random numbers (except
# dropout), calls a custom op or a higher-order op running a subgraph.
ATEN_OPS = frozenset(
    "aten." + op
    for op in """
    linear.default addmm.default mm.default bmm.default matmul.default baddbmm.default
    addmv.default mv.default dot.default einsum.default t.default
    conv1d.default conv2d.default conv3d.default convolution.default _convolution.default
    conv1d.padding conv2d.padding conv3d.padding conv_transpose1d.default
    conv_transpose2d.input conv_transpose3d.input
    relu.default relu_.default gelu.default silu.default sigmoid.default tanh.default
    hardtanh.default hardswish.default hardsigmoid.default leaky_relu.default elu.default
    softplus.default mish.default prelu.default relu6.default glu.default
    batch_norm.default _native_batch_norm_legit_no_training.default
    _native_batch_norm_legit_functional.default _native_batch_norm_legit.default
    native_batch_norm.default layer_norm.default native_layer_norm.default group_norm.default
    native_group_norm.default instance_norm.default rms_norm.default
    max_pool1d.default max_pool2d.default max_pool3d.default max_pool2d_with_indices.default
    avg_pool1d.default avg_pool2d.default avg_pool3d.default adaptive_avg_pool1d.default
    adaptive_avg_pool2d.default adaptive_avg_pool3d.default _adaptive_avg_pool2d.default
    adaptive_max_pool2d.default
    softmax.int _softmax.default log_softmax.int _log_softmax.default
    scaled_dot_product_attention.default
    view.default _unsafe_view.default reshape.default permute.default transpose.int
    flatten.using_ints unflatten.int squeeze.dim squeeze.dims squeeze.default
    unsqueeze.default expand.default expand_as.default cat.default stack.default
    slice.Tensor select.int split.Tensor split_with_sizes.default chunk.default
    unbind.int narrow.default alias.default clone.default contiguous.default
    detach.default lift_fresh_copy.default _to_copy.default to.dtype type_as.default
    repeat.default index_select.default gather.default where.self where.ScalarOther
    where.ScalarSelf masked_fill.Scalar masked_fill.Tensor full_like.default zeros_like.default
    ones_like.default pad.default constant_pad_nd.default roll.default flip.default
    tril.default triu.default
    add.Tensor add.Scalar add_.Tensor sub.Tensor sub.Scalar rsub.Scalar mul.Tensor mul.Scalar
    div.Tensor div.Scalar div.Tensor_mode neg.default pow.Tensor_Scalar pow.Tensor_Tensor
    pow.Scalar sqrt.default rsqrt.default exp.default log.default abs.default clamp.default
    clamp_min.default clamp_max.default reciprocal.default erf.default sin.default
    cos.default floor.default ceil.default round.default sign.default square.default
    maximum.default minimum.default
    eq.Scalar eq.Tensor ne.Scalar ne.Tensor lt.Scalar lt.Tensor le.Scalar le.Tensor gt.Scalar
    gt.Tensor ge.Scalar ge.Tensor logical_not.default logical_and.default logical_or.default
    bitwise_not.default isnan.default
    mean.dim mean.default sum.dim_IntList sum.default amax.default amin.default max.dim
    min.dim max.default min.default argmax.default argmin.default any.dim any.default
    all.dim prod.dim_int var.correction std.correction norm.ScalarOpt_dim
    linalg_vector_norm.default cumsum.default logsumexp.default
    dropout.default native_dropout.default feature_dropout.default alpha_dropout.default
    embedding.default
    sym_size.int sym_stride.int sym_numel.default sym_storage_offset.default
    """.split()
)
_OPERATOR_FUNCS = "getitem add sub mul truediv floordiv mod pow neg eq ne lt le gt ge and_ or_ not_"
SYM_OPS = frozenset(
    [f"_operator.{f}" for f in _OPERATOR_FUNCS.split()]
    + [f"math.{f}" for f in "ceil floor sqrt trunc".split()]
    + [f"torch.sym_{f}" for f in "float int max min not ite sqrt sum".split()]
)
# Argument kinds of torch._export.serde.schema.Argument that hold plain values (no subgraph,
# operator, custom object, or string-keyed argument map).
_ARG_KINDS = frozenset(
    """as_none as_tensor as_tensors as_int as_ints as_float as_floats as_string as_strings
    as_sym_int as_sym_ints as_scalar_type as_memory_format as_layout as_device as_bool as_bools
    as_sym_bool as_sym_bools as_optional_tensors as_sym_float as_sym_floats as_optional_tensor
    as_int_lists as_float_lists""".split()
)
_INPUT_KINDS = frozenset({"user_input", "parameter", "buffer", "tensor_constant", "token"})
_OUTPUT_KINDS = frozenset(
    {"user_output", "loss_output", "buffer_mutation", "user_input_mutation", "token"}
)
_PROGRAM_KEYS = frozenset(
    {"graph_module", "opset_version", "range_constraints", "schema_version", "verifiers"}
    | {"torch_version", "guards_code"}
)
_META_KEYS = frozenset(
    {"stack_trace", "nn_module_stack", "source_fn_stack", "torch_fn", "custom", "from_node"}
    | {"seq_nr", "original_aten", "is_wrapped"}
)
_SPEC_TYPES = frozenset({None, "builtins.tuple", "builtins.list", "builtins.dict"})
_SPEC_TYPES |= {"collections.OrderedDict"}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FQN_PART = re.compile(r"[A-Za-z0-9_]+")
_NAME_KEYS = frozenset({"name", "as_name", "arg_name"})
_FQN_KEYS = frozenset({"parameter_name", "buffer_name", "tensor_constant_name", "fqn"})
_SYMBOL = re.compile(r"[a-z]+\d+")
# sympy constructors a shape expression may call: those torch's deserializer passes to sympify
# and sympy's own arithmetic (exports write srepr: "Mul(Integer(8), Symbol('s77', ...))"); not
# the powers and shifts (Pow, PowByNatural, FloatPow, LShift), which an 18-digit exponent turns
# into an unbounded computation, nor Float, whose second argument is a precision in digits
# (`Float(Rational(1, 3), 100000000)` computes a third to 10^8 digits; exports write floats as
# plain numbers, srepr's `Float('1.5', precision=53)` has a quoted number, never allowed).
_SYMPY_FUNCS = frozenset(
    """FloorDiv ModularIndexing Where PythonMod Mod CleanDiv CeilToInt FloorToInt CeilDiv RShift
    FloatTrueDiv IntTrueDiv IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt
    RoundToInt RoundDecimal ToFloat Identity Max Min Abs Integer Rational Symbol Add Mul
    Eq Ne Lt Le Gt Ge And Or Not""".split()
)
_TOKEN_RE = re.compile(
    r"\s*(?:(?P<num>\d{1,18}(?:\.\d{1,18})?(?:[eE][+-]?\d{1,3})?)"
    r"|(?P<str>'[A-Za-z_][A-Za-z0-9_]*')"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>\*\*|//|==|!=|<=|>=|[-+*/%<>(),=]))"
)


def audit_program_json(doc: Any) -> list[str]:
    """What in one serialized program (models/NAME.json) is off the allowlists."""
    if not isinstance(doc, dict) or not isinstance(doc.get("graph_module"), dict):
        return ["it is not a serialized ExportedProgram"]
    problems: list[str] = []
    extra = sorted(set(doc) - _PROGRAM_KEYS)
    if extra:
        problems.append(f"it has unknown fields {', '.join(map(str, extra[:3]))}")
    guards = doc.get("guards_code") or []
    if guards:
        problems.append(f"guard code {str(guards[0])[:60]!r} (torch.export exec's it)")
    ranges = doc.get("range_constraints") or {}
    if not isinstance(ranges, dict):
        problems.append("its range constraints are not a mapping")
    else:
        for k in ranges:
            if not _SYMBOL.fullmatch(str(k)):
                problems.append(f"shape symbol {str(k)[:60]!r} is not a plain symbol")
    gm = doc["graph_module"]
    graph = gm.get("graph") if isinstance(gm.get("graph"), dict) else {}
    if graph.get("custom_obj_values"):
        problems.append("it stores custom objects")
    if gm.get("treespec_namedtuple_fields"):
        problems.append("its inputs or outputs are named tuples")
    nodes = graph.get("nodes")
    for node in nodes if isinstance(nodes, list) else []:
        if not isinstance(node, dict):
            problems.append("a graph node is not a mapping")
            continue
        target = node.get("target")
        if not isinstance(target, str) or not _target_ok(target):
            problems.append(f"the graph calls {str(target)[:80]!r}, not a pure tensor operator")
        for arg in [*(node.get("inputs") or []), *(node.get("outputs") or [])]:
            value = arg.get("arg", arg) if isinstance(arg, dict) else arg
            kinds = list(value) if isinstance(value, dict) else ["?"]
            if len(kinds) != 1 or kinds[0] not in _ARG_KINDS:
                problems.append(f"{target} takes a {','.join(map(str, kinds))[:40]} argument")
        meta = node.get("metadata") or {}
        unknown = sorted(set(meta) - _META_KEYS) if isinstance(meta, dict) else ["?"]
        if unknown:
            problems.append(f"node metadata {unknown[0]!r} is not one torch.export.save writes")
        if isinstance(meta, dict):
            problems += _meta_problems(meta)
    signature = gm.get("signature") if isinstance(gm.get("signature"), dict) else {}
    for key, allowed in (("input_specs", _INPUT_KINDS), ("output_specs", _OUTPUT_KINDS)):
        for spec in signature.get(key) or []:
            kind = next(iter(spec), None) if isinstance(spec, dict) and len(spec) == 1 else None
            if kind not in allowed:
                problems.append(f"a graph {key[:-6]} is a {str(kind)[:40]}")
    for call in gm.get("module_call_graph") or []:
        sig = call.get("signature") if isinstance(call, dict) else None
        for spec_key in ("in_spec", "out_spec"):
            text = sig.get(spec_key) if isinstance(sig, dict) else None
            if text is not None and not _spec_ok(text):
                problems.append(f"its {spec_key} names types beyond tuple, list and dict")
    _walk_names(gm, None, problems)
    return problems


# nn_module_stack entries, "key,path,type": torch.export.unflatten makes each path a submodule
# and writes it into the Python source of its parent's GraphModule (`getattr(self, "<part>")`
# for a part that is not an identifier, unescaped), which it compiles; so paths are dotted
# identifiers, keys and type names plain dotted names.
_STACK_KEY = re.compile(r"[A-Za-z0-9_.]{1,1000}")
_STACK_TYPE = re.compile(r"[A-Za-z0-9_.<>]{1,1000}")
# source_fn_stack targets torch resolves by getattr on torch, torch.nn, operator and math (a
# `torch.<name>` lookup can import torch submodules or call deprecated-attribute functions):
# only operators on the allowlists, or torch.nn modules and functions by their public names.
_SOURCE_FN = re.compile(
    r"torch\.nn\.(modules\.[a-z0-9_]+\.[A-Z][A-Za-z0-9]*|functional\.[a-z0-9_]+)"
)
_RESOLVED_PREFIXES = ("torch", "_operator", "math", "#")


def _meta_problems(meta: dict[str, Any]) -> list[str]:
    """The node metadata torch's deserializer resolves or turns into source: nn_module_stack
    (module paths that become submodule names and source text) and source_fn_stack (targets
    looked up by getattr)."""
    problems: list[str] = []
    stack = meta.get("nn_module_stack")
    if stack is not None:
        for entry in str(stack).split(";"):
            parts = entry.split(",")
            if len(parts) != 3 or not (
                _STACK_KEY.fullmatch(parts[0])
                and (parts[1] == "" or fqn_ok(parts[1]))
                and _STACK_TYPE.fullmatch(parts[2])
            ):
                problems.append(f"node metadata has a module stack entry {entry[:60]!r}")
                break
    source = meta.get("source_fn_stack")
    if source is not None:
        for entry in str(source).split(";"):
            parts = entry.split(",")
            fn = parts[-1]
            if len(parts) != 2 or not _ident_ok(parts[0]) or not _source_fn_ok(fn):
                problems.append(f"node metadata names {fn[:60]!r}")
                break
    return problems


def _source_fn_ok(fn: str) -> bool:
    if not fn.startswith(_RESOLVED_PREFIXES):
        return fqn_ok(fn)  # kept as text by torch, never looked up
    return _target_ok(fn) or _SOURCE_FN.fullmatch(fn) is not None


def _walk_names(obj: Any, key: str | None, problems: list[str]) -> None:
    """Every name must be an identifier and every module path dotted identifiers (both become
    Python source when torch builds the GraphModule); shape expressions plain arithmetic."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if key in ("tensor_values", "sym_int_values", "sym_bool_values", "sym_float_values"):
                if not _ident_ok(k):
                    problems.append(f"value name {str(k)[:60]!r} is not an identifier")
            if k == "metadata":
                continue  # strings for humans (stack traces); checked in audit_program_json
            _walk_names(v, k, problems)
    elif isinstance(obj, list):
        for v in obj:
            _walk_names(v, key, problems)
    elif isinstance(obj, str):
        if key in _NAME_KEYS and not _ident_ok(obj):
            problems.append(f"name {obj[:60]!r} is not an identifier")
        elif key in _FQN_KEYS and not fqn_ok(obj):
            problems.append(f"module path {obj[:60]!r} is not dotted identifiers")
        elif key == "forward_arg_names" and not _ident_ok(obj):
            problems.append(f"argument name {obj[:60]!r} is not an identifier")
        elif key == "expr_str" and not expr_ok(obj):
            problems.append(f"shape expression {obj[:60]!r} is not plain arithmetic")


def _ident_ok(name: Any) -> bool:
    return (
        isinstance(name, str)
        and len(name) <= 200
        and _IDENT.fullmatch(name) is not None
        and not keyword.iskeyword(name)
        and not name.startswith("__")
    )


def fqn_ok(fqn: Any) -> bool:
    """Whether a module path (a parameter's, a weight's) is dotted identifiers: at most 1000
    characters, parts of letters, digits and `_`, none starting with `__`; "" (the root) passes."""
    if not isinstance(fqn, str) or len(fqn) > 1000:
        return False
    if fqn == "":
        return True
    return all(_FQN_PART.fullmatch(part) and not part.startswith("__") for part in fqn.split("."))


def _spec_ok(text: Any) -> bool:
    try:
        doc = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return False
    if not isinstance(doc, list) or len(doc) != 2:
        return False

    def visit(node: Any) -> bool:
        if not isinstance(node, dict) or node.get("type") not in _SPEC_TYPES:
            return False
        return all(visit(c) for c in node.get("children_spec") or [])

    return visit(doc[1])


def _target_ok(target: str) -> bool:
    if target in SYM_OPS:
        return True
    return target.startswith("torch.ops.") and target[len("torch.ops.") :] in ATEN_OPS


def expr_ok(expr: str) -> bool:
    """Whether a symbolic-shape expression is plain arithmetic that torch's `sympify` cannot turn
    into a call of arbitrary Python code or an unbounded computation: numbers (at most 18
    digits), shape symbols (s0, u3, also quoted), the sympy functions of `_SYMPY_FUNCS` called
    with parentheses, `name=` keyword arguments, + - * / // % comparisons, and `**` only between
    a number or symbol and an exponent of at most 64, never chained (`9**9**9` is 9^387420489,
    `((9**64)**64)**64...` as bad). Never attributes, subscripts, dunders or other names."""
    if len(expr) > 2000:
        return False
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = expr.rstrip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.end() == pos:
            return False
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    for i, (kind, value) in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        prev = tokens[i - 1][1] if i > 0 else ""
        if kind == "name":
            if _SYMBOL.fullmatch(value) or value in ("oo", "True", "False"):
                continue
            if value in _SYMPY_FUNCS and nxt[1] == "(":
                continue
            if value.islower() and nxt[1] == "=" and prev in ("(", ","):
                continue
            return False
        if kind == "op" and value == "**":
            base = tokens[i - 1] if i > 0 else ("", "")
            after = tokens[i + 2][1] if i + 2 < len(tokens) else ""
            if not (base[0] == "num" or (base[0] == "name" and _SYMBOL.fullmatch(base[1]))) or not (
                nxt[0] == "num" and nxt[1].isdigit() and int(nxt[1]) <= 64 and after != "**"
            ):
                return False
    return True
