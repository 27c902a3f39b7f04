"""A fast, bounded, code-free scan of one pickle's opcodes, done before anything is unpickled.

The scan walks the opcodes exactly as CPython's C unpickler would (same argument decoding, same mark/fence
stack discipline, same memo numbering, same Python 2 name mapping below protocol 3) and reports every global
the pickle would import -- from ``GLOBAL``, ``INST``, ``STACK_GLOBAL`` (module and name resolved through the
memo) and the extension registry. It never allocates what a length field claims before checking it against
the bytes that remain, and it bounds the work: size, opcode count, nesting depth, and the size of anything
the unpickler would have to hash (a dict key, a set element) -- a tuple nested 300,000 deep or a memo DAG that
expands to 2**33 leaves is refused here, before the C unpickler could overflow its stack or spin on it.

Limits (generous for real checkpoints; a Stable Diffusion ``data.pkl`` is ~0.2 MB and ~25,000 opcodes):
:data:`MAX_PICKLE_BYTES`, :data:`MAX_OPCODES`, :data:`MAX_DEPTH`, :data:`MAX_KEY_DEPTH`, :data:`MAX_KEY_SIZE`.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import pickletools
from dataclasses import dataclass
from typing import BinaryIO

__all__ = [
    "MAX_DEPTH",
    "MAX_KEY_DEPTH",
    "MAX_KEY_SIZE",
    "MAX_OPCODES",
    "MAX_PICKLE_BYTES",
    "PickleScan",
    "qualname",
    "scan_pickle",
    "scan_next_pickle",
    "scan_pickle_globals",
]

MAX_PICKLE_BYTES = 64 << 20  # one pickle (a zip member decompressed, or one legacy pickle)
MAX_OPCODES = 8_000_000
MAX_DEPTH = 200  # container nesting
MAX_KEY_DEPTH = 32  # nesting of one dict key / set element (hashed recursively, in C)
MAX_KEY_SIZE = 10_000  # objects in one dict key / set element, counted with repeats (memo DAGs)
_SIZE_CAP = 1 << 62

# calls whose arguments the callee hashes (set(iterable), OrderedDict(pairs))
_HASHING_CALLS = frozenset({"builtins.set", "builtins.frozenset", "collections.OrderedDict"})


def qualname(module: str, name: str, proto: int = 0) -> str:
    """``module.name`` as the unpickler resolves it: Python 2 names are mapped below protocol 3."""
    if proto < 3:
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


@dataclass(frozen=True)
class PickleScan:
    """What a scan found: globals in first-use order, an error (None if the pickle is well formed), the
    offset just past STOP (or where the scan stopped), and whether a work limit was hit."""

    globals: list[str]
    error: str | None
    end: int
    limit: bool = False


class _Stop(Exception):
    def __init__(self, msg: str, limit: bool = False):
        super().__init__(msg)
        self.limit = limit


class _Global:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


# argument kinds
_NONE, _FIXED, _LINE, _TWO_LINES, _LEN1, _LEN4S, _LEN4U, _LEN8U = range(8)
# special handling
(_GENERIC, _STR, _STACK_GLOBAL, _GLOBAL, _INST, _PUT, _GET, _MEMOIZE, _DUP, _MUTATE, _MUTATE_MARK, _HASH_MARK,
 _CALL, _PROTO, _STOP_OP, _EXT, _MARK, _EMPTY, _POP, _FRAME, _LEAF, _OBJ, _UNARY) = range(23)  # fmt: skip

_ARG_KIND = {1: _FIXED, 2: _FIXED, 4: _FIXED, 8: _FIXED, pickletools.UP_TO_NEWLINE: _LINE,
             pickletools.TAKEN_FROM_ARGUMENT1: _LEN1, pickletools.TAKEN_FROM_ARGUMENT4: _LEN4S,
             pickletools.TAKEN_FROM_ARGUMENT4U: _LEN4U, pickletools.TAKEN_FROM_ARGUMENT8U: _LEN8U}  # fmt: skip
_SPECIAL = {
    "STRING": _STR, "BINSTRING": _STR, "SHORT_BINSTRING": _STR, "UNICODE": _STR, "BINUNICODE": _STR,
    "SHORT_BINUNICODE": _STR, "BINUNICODE8": _STR, "STACK_GLOBAL": _STACK_GLOBAL, "GLOBAL": _GLOBAL,
    "INST": _INST, "PUT": _PUT, "BINPUT": _PUT, "LONG_BINPUT": _PUT, "GET": _GET, "BINGET": _GET,
    "LONG_BINGET": _GET, "MEMOIZE": _MEMOIZE, "DUP": _DUP, "APPEND": _MUTATE, "SETITEM": _MUTATE,
    "BUILD": _MUTATE, "APPENDS": _MUTATE_MARK, "SETITEMS": _MUTATE_MARK, "ADDITEMS": _MUTATE_MARK,
    "DICT": _HASH_MARK, "FROZENSET": _HASH_MARK, "REDUCE": _CALL, "NEWOBJ": _CALL, "NEWOBJ_EX": _CALL,
    "OBJ": _OBJ, "PROTO": _PROTO, "STOP": _STOP_OP, "EXT1": _EXT, "EXT2": _EXT, "EXT4": _EXT, "MARK": _MARK,
    "EMPTY_LIST": _EMPTY, "EMPTY_DICT": _EMPTY, "EMPTY_SET": _EMPTY, "POP": _POP, "FRAME": _FRAME,
}  # fmt: skip


def _table() -> list[tuple | None]:
    table: list[tuple | None] = [None] * 256
    for op in pickletools.opcodes:
        before = op.stack_before
        to_mark = pickletools.markobject in before
        n_pop = 0 if to_mark else len(before)
        kind = _NONE if op.arg is None else _ARG_KIND[op.arg.n]
        if op.name in ("GLOBAL", "INST"):
            kind = _TWO_LINES
        size = op.arg.n if kind == _FIXED else 0
        special = _SPECIAL.get(op.name, _GENERIC)
        if special == _GENERIC and not before and op.stack_after:
            special = _LEAF
        elif special == _GENERIC and not to_mark and n_pop == 1 and len(op.stack_after) == 1:
            special = _UNARY
        table[ord(op.code.encode("latin1"))] = (
            op.name,
            kind,
            size,
            to_mark,
            n_pop,
            len(op.stack_after),
            special,
        )
    return table


_OPS = _table()
_F_BINPUT, _F_MEMOIZE, _F_BINGET, _F_SHORT_UNICODE, _F_MARK = -1, -2, -3, -4, -5
_F_LONG_BINPUT, _F_LONG_BINGET, _F_BINUNICODE = -6, -7, -8
_FAST = [0] * 256  # > 0: a scalar opcode with a (total) length; < 0: one of the _F_ codes
for _code, _len in (
    (b"K", 2),
    (b"M", 3),
    (b"J", 5),
    (b"G", 9),
    (b"N", 1),
    (b"\x88", 1),
    (b"\x89", 1),
    (b")", 1),
):
    _FAST[_code[0]] = _len
for _code, _f in ((b"q", _F_BINPUT), (b"\x94", _F_MEMOIZE), (b"h", _F_BINGET), (b"\x8c", _F_SHORT_UNICODE),
                  (b"(", _F_MARK), (b"r", _F_LONG_BINPUT), (b"j", _F_LONG_BINGET), (b"X", _F_BINUNICODE)):  # fmt: skip
    _FAST[_code[0]] = _f
_LEAF_NODE = (0, 1)


def _combine(items: list) -> list[int]:
    """The node of an object built from ``items``: one deeper than the deepest, their sizes summed."""
    nodes = [x for x in items if type(x) is list]
    if not nodes:
        return [1, 1 + len(items)]
    s = 1 + len(items) - len(nodes) + sum(x[1] for x in nodes)
    return [1 + max(x[0] for x in nodes), s if s < _SIZE_CAP else _SIZE_CAP]


def _check_hashed(items: list, margin: int, what: str) -> None:
    for x in items:
        if type(x) is list and (x[0] > MAX_KEY_DEPTH + margin or x[1] > MAX_KEY_SIZE):
            raise _Stop(f"too costly to unpickle: a {what} nested {x[0]} deep with {min(x[1], 10**9):,}+ objects to hash",
                        limit=True)  # fmt: skip


def _decode_str(name: str, raw: bytes) -> str:
    if name == "STRING":
        if len(raw) < 2 or raw[:1] != raw[-1:] or raw[:1] not in (b"'", b'"'):
            raise _Stop("corrupt (STRING argument not quoted)")
        return codecs.escape_decode(raw[1:-1])[0].decode("latin1")
    if name in ("BINSTRING", "SHORT_BINSTRING"):
        return raw.decode("latin1")
    if name == "UNICODE":
        return raw.decode("raw-unicode-escape")
    return raw.decode("utf-8", "surrogatepass")


# One flat opcode loop on purpose (C901 waived): the hot path keeps its state in locals and dispatches inline;
# a function per opcode would cost a call per opcode on 25,000-opcode pickles and spread the stack discipline
# that the scan must keep exactly like CPython's over many places.
def scan_pickle(data: bytes, start: int = 0, *, max_bytes: int = MAX_PICKLE_BYTES,  # noqa: C901
                max_opcodes: int = MAX_OPCODES) -> PickleScan:  # fmt: skip
    """Scan the pickle starting at ``data[start]`` up to its STOP (see the module docstring)."""
    n = len(data)
    cap = min(n, start + max_bytes)
    found: dict[str, None] = {}
    stack: list = []
    marks: list[int] = []
    memo: dict[int, object] = {}
    proto = 0
    pos = start
    ops = 0
    ops_table = _OPS
    fast_table = _FAST
    try:
        while True:
            if pos >= cap:
                raise _Stop("", cap < n)
            code = data[pos]
            fast = fast_table[code]
            if fast and pos + 10 <= cap:  # hot opcodes, same semantics as the general path below
                ops += 1
                if ops > max_opcodes:
                    raise _Stop(f"too long: more than {max_opcodes:,} opcodes", limit=True)
                if fast > 0:  # a scalar with a fixed-size argument
                    stack.append(_LEAF_NODE)
                    pos += fast
                    continue
                if fast == _F_BINPUT:
                    if len(stack) > (marks[-1] if marks else 0):
                        memo[data[pos + 1]] = stack[-1]
                        pos += 2
                        continue
                elif fast == _F_MEMOIZE:
                    if len(stack) > (marks[-1] if marks else 0):
                        memo[len(memo)] = stack[-1]
                        pos += 1
                        continue
                elif fast == _F_BINGET:
                    idx = data[pos + 1]
                    if idx in memo:
                        stack.append(memo[idx])
                        pos += 2
                        continue
                elif fast == _F_SHORT_UNICODE:
                    length = data[pos + 1]
                    if pos + 2 + length <= cap:
                        stack.append(data[pos + 2 : pos + 2 + length].decode("utf-8", "surrogatepass"))
                        pos += 2 + length
                        continue
                elif fast == _F_LONG_BINPUT:
                    if len(stack) > (marks[-1] if marks else 0):
                        memo[int.from_bytes(data[pos + 1 : pos + 5], "little")] = stack[-1]
                        pos += 5
                        continue
                elif fast == _F_LONG_BINGET:
                    idx = int.from_bytes(data[pos + 1 : pos + 5], "little")
                    if idx in memo:
                        stack.append(memo[idx])
                        pos += 5
                        continue
                elif fast == _F_BINUNICODE:
                    length = int.from_bytes(data[pos + 1 : pos + 5], "little")
                    if pos + 5 + length <= cap:
                        stack.append(data[pos + 5 : pos + 5 + length].decode("utf-8", "surrogatepass"))
                        pos += 5 + length
                        continue
                elif fast == _F_MARK:
                    marks.append(len(stack))
                    pos += 1
                    continue
                ops -= 1  # not taken: the general path counts it
            op = ops_table[code]
            if op is None:
                raise _Stop(f"corrupt (unknown opcode {code:#04x} at byte {pos - start})")
            pos += 1
            ops += 1
            if ops > max_opcodes:
                raise _Stop(f"too long: more than {max_opcodes:,} opcodes", limit=True)
            name, kind, size, to_mark, n_pop, n_push, special = op
            raw = b""
            if kind == _NONE:
                pass
            elif kind == _FIXED:
                if pos + size > cap:
                    raise _Stop("", cap < n)
                raw = data[pos : pos + size]
                pos += size
            elif kind in (_LINE, _TWO_LINES):
                nl = data.find(b"\n", pos, cap)
                if kind == _TWO_LINES and nl >= 0:
                    nl = data.find(b"\n", nl + 1, cap)
                if nl < 0:
                    raise _Stop("", cap < n)
                raw = data[pos:nl]
                pos = nl + 1
                if name in ("INT", "LONG"):
                    int(raw[:-1] if raw.endswith(b"L") else raw)  # ValueError: not a pickle
                elif name == "FLOAT":
                    float(raw)
            else:
                width = 1 if kind == _LEN1 else 4 if kind in (_LEN4S, _LEN4U) else 8
                if pos + width > cap:
                    raise _Stop("", cap < n)
                length = int.from_bytes(data[pos : pos + width], "little", signed=kind == _LEN4S)
                pos += width
                if length < 0:
                    raise _Stop(f"corrupt ({name} with negative length {length})")
                if pos + length > cap:  # checked before anything is read or allocated
                    raise _Stop("", cap < n or length > max_bytes)
                if special == _STR:
                    raw = data[pos : pos + length]
                pos += length

            # ---- stack
            fence = marks[-1] if marks else 0
            if special == _UNARY:  # TUPLE1, BINPERSID, ...: one object in, one out
                if len(stack) <= fence:
                    raise _Stop("corrupt (stack underflow)")
                x = stack[-1]
                if type(x) is list:
                    if x[0] >= MAX_DEPTH:
                        raise _Stop(f"nested more than {MAX_DEPTH} levels deep", limit=True)
                    stack[-1] = [x[0] + 1, min(x[1] + 1, _SIZE_CAP)]
                else:
                    stack[-1] = [1, 2]
            elif special == _LEAF:
                stack.append(_LEAF_NODE)
            elif special == _STR:
                stack.append(_decode_str(name, raw))
            elif special == _EMPTY:
                stack.append([1, 1])
            elif special == _MARK:
                marks.append(len(stack))
            elif special == _GET:
                idx = int(raw) if kind == _LINE else int.from_bytes(raw, "little")
                if idx not in memo:
                    raise _Stop(f"corrupt (memo entry {idx} read before it is written)")
                stack.append(memo[idx])
            elif special in (_PUT, _MEMOIZE):
                if len(stack) <= fence:
                    raise _Stop("corrupt (stack underflow)")
                if special == _MEMOIZE:
                    idx = len(memo)
                else:
                    idx = int(raw) if kind == _LINE else int.from_bytes(raw, "little")
                    if idx < 0:
                        raise _Stop("corrupt (negative memo index)")
                memo[idx] = stack[-1]
            elif special == _DUP:
                if len(stack) <= fence:
                    raise _Stop("corrupt (stack underflow)")
                stack.append(stack[-1])
            elif special == _POP:
                if marks and marks[-1] == len(stack):
                    marks.pop()
                elif len(stack) <= fence:
                    raise _Stop("corrupt (stack underflow)")
                else:
                    stack.pop()
            elif special == _PROTO:
                proto = raw[0]
            elif special == _FRAME:
                pass
            elif special == _STOP_OP:
                if len(stack) <= fence:
                    raise _Stop("corrupt (stack underflow at STOP)")
                return PickleScan(list(found), None, pos)
            elif special in (_GLOBAL, _INST):
                module, _, attr = raw.decode("utf-8", "replace").partition("\n")
                qual = qualname(module, attr, proto)
                found[qual] = None
                if special == _GLOBAL:
                    stack.append(_Global(qual))
                else:
                    items = _pop_mark(stack, marks)
                    if qual in _HASHING_CALLS:
                        _check_hashed(items, 2, "set element")
                    stack.append(_new(_combine(items)))
            elif special == _STACK_GLOBAL:
                if len(stack) - 2 < fence:
                    raise _Stop("corrupt (stack underflow)")
                attr, module = stack.pop(), stack.pop()
                if type(module) is str and type(attr) is str:
                    qual = qualname(module, attr, proto)
                else:
                    qual = "<unresolved STACK_GLOBAL>"
                found[qual] = None
                stack.append(_Global(qual))
            elif special == _EXT:
                qual = f"<extension registry code {int.from_bytes(raw, 'little', signed=size == 4)}>"
                found[qual] = None
                stack.append(_Global(qual))
            elif special == _MUTATE:
                if len(stack) - n_pop < fence:
                    raise _Stop("corrupt (stack underflow)")
                values = stack[len(stack) - n_pop + 1 :]
                del stack[len(stack) - n_pop + 1 :]
                if name == "SETITEM":
                    _check_hashed(values[:1], 0, "dict key")
                _update(stack, values)
            elif special == _MUTATE_MARK:
                if not marks:
                    raise _Stop("corrupt (no MARK)")
                items = _pop_mark(stack, marks)
                if len(stack) <= (marks[-1] if marks else 0):
                    raise _Stop("corrupt (stack underflow)")
                if name == "SETITEMS":
                    _check_hashed(items[0::2], 0, "dict key")
                elif name == "ADDITEMS":
                    _check_hashed(items, 0, "set element")
                _update(stack, items)
            elif special == _HASH_MARK:
                if not marks:
                    raise _Stop("corrupt (no MARK)")
                items = _pop_mark(stack, marks)
                _check_hashed(items[0::2] if name == "DICT" else items, 0,
                              "dict key" if name == "DICT" else "set element")  # fmt: skip
                stack.append(_new(_combine(items)))
            elif special in (_CALL, _OBJ):
                if special == _OBJ:
                    if not marks:
                        raise _Stop("corrupt (no MARK)")
                    items = _pop_mark(stack, marks)
                    if not items:
                        raise _Stop("corrupt (stack underflow)")
                else:
                    if len(stack) - n_pop < fence:
                        raise _Stop("corrupt (stack underflow)")
                    items = stack[len(stack) - n_pop :]
                    del stack[len(stack) - n_pop :]
                func = items[0]
                if type(func) is _Global and func.name in _HASHING_CALLS:
                    _check_hashed(items[1:], 3, "set element or dict key")
                stack.append(_new(_combine(items[1:])))
            else:  # generic: pop (to a mark, or n_pop items), push n_push
                if to_mark:
                    if not marks:
                        raise _Stop("corrupt (no MARK)")
                    items = _pop_mark(stack, marks)
                elif n_pop:
                    if len(stack) - n_pop < fence:
                        raise _Stop("corrupt (stack underflow)")
                    items = stack[len(stack) - n_pop :]
                    del stack[len(stack) - n_pop :]
                else:
                    items = []
                if n_push:
                    stack.append(_new(_combine(items)) if items else _LEAF_NODE)
    except _Stop as e:
        msg = str(e)
        if not msg:
            if e.limit:
                msg = f"larger than the {max_bytes >> 20} MiB limit for one pickle"
            else:
                msg = "truncated (the pickle ends before its STOP opcode)"
        return PickleScan(list(found), msg, pos, e.limit)
    except (ValueError, UnicodeError, IndexError) as e:  # undecodable arguments
        return PickleScan(list(found), f"corrupt ({type(e).__name__} at byte {pos - start})", pos)


def _pop_mark(stack: list, marks: list[int]) -> list:
    at = marks.pop()
    items = stack[at:]
    del stack[at:]
    return items


def _new(node: list[int]) -> list[int]:
    if node[0] > MAX_DEPTH:
        raise _Stop(f"nested more than {MAX_DEPTH} levels deep", limit=True)
    return node


def _update(stack: list, values: list) -> None:
    """An in-place change of the object on top of the stack (append, setitem, build)."""
    target = stack[-1]
    grown = _combine(values)
    if type(target) is list:
        if grown[0] > target[0]:
            target[0] = _new(grown)[0]
        target[1] = min(_SIZE_CAP, target[1] + grown[1])
    else:
        stack[-1] = _new(_combine([target, *values]))


_FIRST_OPCODES = frozenset(b"\x80(c}])NIJKLMSTUVXFG\x8c\x88\x89\x8a\x8b")


def looks_like_pickle(head: bytes) -> bool:
    """Whether the first bytes of a file read as the start of a pickle of any protocol (0-5): a plausible
    first opcode and no malformed opcode before the bytes run out (protocol 0/1 pickles have no magic)."""
    if not head or head[0] not in _FIRST_OPCODES:
        return False
    result = scan_pickle(head, max_bytes=len(head))
    return (
        result.error is None or result.limit or result.error.startswith("truncated") or bool(result.globals)
    )


def scan_pickle_globals(data: bytes) -> list[str]:
    """Every ``module.name`` global that a pickle references (GLOBAL, INST, STACK_GLOBAL), in first-use
    order, without executing anything. Raises ``ValueError`` if the pickle is truncated, malformed or over
    a work limit."""
    result = scan_pickle(bytes(data))
    if result.error is not None:
        raise ValueError(f"pickle is {result.error}")
    return result.globals


def scan_next_pickle(f: BinaryIO, size: int) -> tuple[bytes, PickleScan]:
    """Scan the pickle that starts at ``f``'s position in a file of ``size`` bytes (legacy torch files are
    pickles back to back): 1 MiB is read, then more while the pickle runs past what was read, up to
    :data:`MAX_PICKLE_BYTES` -- never what a length field claims. Returns the bytes read and the scan; ``f`` is
    left just past the pickle's STOP."""
    start = f.tell()
    want = 1 << 20
    available = min(MAX_PICKLE_BYTES, size - start)
    while True:
        data = f.read(min(want, available))
        result = scan_pickle(data, max_bytes=len(data))
        ran_out = result.error is not None and result.error.startswith(("larger than", "truncated"))
        if not ran_out or len(data) >= available:
            break
        want *= 8
        f.seek(start)
    if ran_out and size - start > MAX_PICKLE_BYTES:
        result = PickleScan(result.globals, f"larger than the {MAX_PICKLE_BYTES >> 20} MiB limit for one pickle",
                            result.end, True)  # fmt: skip
    elif ran_out:
        result = PickleScan(result.globals, "truncated (the pickle ends before its STOP opcode)", result.end)
    f.seek(start + result.end)
    return data, result
