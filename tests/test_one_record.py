"""One record per architecture: no family-name string comparisons outside the records.

Walks ``src/sdlens/**/*.py`` (except ``arch/families/``, ``arch/record.py`` and ``testing/``) and flags, on code
(comments left out), comparisons against a quoted family id: ``== "sdxl"``, ``!= "sd2"``, ``in ("sd1", ...)``,
``.startswith("flux")`` (any prefix of an id), dict literals keyed by ids and ``case "sd3":``.
"""

from __future__ import annotations

import io
import re
import tokenize
from functools import cache
from pathlib import Path

from sdlens.arch import families

SRC = Path(__file__).resolve().parents[1] / "src" / "sdlens"
EXCLUDED = ("arch/families/", "arch/record.py", "testing/")
# the files whose if-chains this round's identify work removed: they must stay clean
CLEAN = (
    "arch/detect.py",
    "arch/identify.py",
    "analysis/inspect.py",
    "arch/text_encoders.py",
    "analysis/lora.py",
    "io/base.py",
)
# old id spaces: the FLUX alias, the VAE pseudo-families (now the VAE configs kl_f8_c4 / kl_f8_c16), the block-style ids
EXTRA_IDS = ("flux", "vae4", "vae16", "mmdit")


@cache
def _rules() -> tuple[re.Pattern[str], ...]:
    ids = sorted({f.id for f in families.FAMILIES} | set(EXTRA_IDS), key=len, reverse=True)
    exact = "|".join(map(re.escape, ids))
    # prefixes (2+ characters) of the records' ids, for startswith / endswith (not of the VAE ids: "vae_encoder")
    prefixes = sorted(
        {i[:n] for i in ids if not i.startswith("vae") for n in range(2, len(i) + 1)}, key=len, reverse=True
    )
    pre = "|".join(map(re.escape, prefixes))
    q = r"""["']"""
    return (
        re.compile(rf"(?:==|!=)\s*{q}(?:{exact}){q}"),
        re.compile(rf"{q}(?:{exact}){q}\s*(?:==|!=)"),
        re.compile(rf"\bin\s*[(\[{{][^)\]}}]*{q}(?:{exact}){q}"),
        re.compile(rf"\.(?:startswith|endswith)\(\s*\(?[^)]*{q}(?:{pre}){q}"),
        re.compile(rf"(?:^|[{{,])\s*{q}(?:{exact}){q}\s*:"),
        re.compile(rf"\bcase\s+{q}(?:{exact}){q}"),
    )


def _code_lines(text: str) -> dict[int, str]:
    """Line number -> the line without its comment."""
    lines = dict(enumerate(text.splitlines(), 1))
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                row, col = tok.start
                lines[row] = lines[row][:col]
    except (tokenize.TokenError, SyntaxError):  # pragma: no cover - the package always tokenizes
        pass
    return lines


def offenders_in(text: str) -> list[tuple[int, str]]:
    return [
        (n, line.strip()) for n, line in _code_lines(text).items() if any(r.search(line) for r in _rules())
    ]


def _scan() -> list[str]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(EXCLUDED):
            continue
        out += [f"{rel}:{n}: {line}" for n, line in offenders_in(path.read_text(encoding="utf-8"))]
    return out


def test_the_detector_knows_a_comparison_when_it_sees_one():
    flagged = [
        'if family == "sdxl":',
        'if "sd2" != fam:',
        'x = arch in ("sd1", "sd2", "sdxl")',
        'if f not in ["sd3"]:',
        'fam.startswith("flux")',
        'k.startswith(("sd", "x"))',
        '_CONTEXT = {768: "sd1", "sdxl": 2048}',
        '    "sd1": {"clip_l": "last"},',
        'case "pixart_alpha":',
        'cfg = "vae16" == kind',
    ]
    clean = [
        'families.get("sd1")',
        'c.id.startswith("vae")',
        'rel.startswith(("decoder.", "post_quant_conv."))',
        'x = 1  # if family == "sdxl"',
        'print("SDXL base")',
        'name == "single_blocks"',
        'r"double_blocks|single"',
    ]
    assert [n for n, _ in offenders_in("\n".join(flagged))] == list(range(1, len(flagged) + 1))
    assert offenders_in("\n".join(clean)) == []


def test_files_cleaned_of_family_if_chains_stay_clean():
    bad = [o for o in _scan() if o.startswith(CLEAN)]
    assert not bad, "family-name comparisons outside the records:\n" + "\n".join(bad)


def test_no_family_name_comparisons_outside_the_records():
    bad = _scan()
    print("\n".join(bad))
    assert not bad, "family-name comparisons outside the records:\n" + "\n".join(bad)
