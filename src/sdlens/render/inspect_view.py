"""The human view of an InspectReport: a one-line summary, then compact detail tables."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from sdlens.analysis.inspect import InspectReport, human_bytes, human_count
from sdlens.analysis.prediction import LABELS, Prediction
from sdlens.render.safe_text import ERROR_LIMIT, NAME_LIMIT, printable, safe
from sdlens.render.text import fits, path_line, plural, print_wide_or_narrow


def _join(items, sep: str = ", ") -> str:
    return sep.join(safe(i) for i in items)


def _kv_table(title: str) -> Table:
    t = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold cyan", no_wrap=True)
    t.add_column()
    return t


def _kv_whole(console: Console, title: str, rows: list[tuple[str, str]]) -> None:
    """Key / value rows; a value holding a word too long for the value column (a hash, a path) is printed
    under the table, on its own line, whole."""
    keyw = max((len(k) for k, _ in rows), default=0)
    room = console.width - keyw - 2
    console.print(
        Text(title, style="italic")
    )  # above, not as the table's title: a narrow table would fold it
    t = _kv_table("")
    long: list[tuple[str, str]] = []
    for k, v in rows:
        k, v = printable(k), printable(v)
        if max((len(w) for w in v.split()), default=0) > room:
            long.append((k, v))
        else:
            t.add_row(Text(k), Text(v))  # Text: untrusted metadata is never read as markup
    console.print(t)
    for k, v in long:
        console.print(Text(k, style="bold cyan"))
        console.print(Text("  " + v), soft_wrap=True)


def _components(r: InspectReport, console: Console) -> None:
    """The component table; when the key prefixes do not fit beside the numbers they are listed under it."""

    def table(with_prefix: bool) -> Table:
        t = Table(title="Components", title_justify="left")
        cols = ("component", "prefix", "layout", "tensors", "params", "size", "dtypes")
        for col in cols if with_prefix else [c for c in cols if c != "prefix"]:
            t.add_column(
                col,
                justify="right" if col in ("tensors", "params", "size") else "left",
                no_wrap=col != "dtypes",
            )
        for c in r.components:
            row = [
                safe(c.label),
                safe(c.prefix) or "(bare)",
                safe(c.convention),
                str(c.tensors),
                human_count(c.params),
                human_bytes(c.bytes),
                _join(f"{d}×{n}" for d, n in c.dtypes.items()),
            ]
            t.add_row(*(row if with_prefix else row[:1] + row[2:]))
        return t

    if print_wide_or_narrow(console, table):
        return
    grid = _kv_table("Key prefixes")
    for c in r.components:
        grid.add_row(safe(c.label), Text(printable(c.prefix) or "(bare)", overflow="fold"))
    console.print(grid)


def render_report(r: InspectReport, console: Console, brief: bool = False) -> None:
    colour = {"high": "green", "medium": "yellow", "low": "red"}[r.confidence]
    console.print(Panel(Text(printable(r.summary), style="bold"), border_style=colour, expand=False))
    path_line(console, "", printable(r.path, NAME_LIMIT))
    if brief:
        for p in r.problems:
            console.print(f"[red]problem:[/] {safe(p, ERROR_LIMIT)}")
        return
    _identity(r, console, colour)
    _state(r, console)
    _precision(r, console)
    if r.quantisation is not None:
        _quantisation(r, console)
    if r.lora is not None:
        _lora(r, console)
    if r.loading is not None:
        _how_to_load(r, console)
    for p in r.problems:
        console.print(f"[bold red]problem:[/] {safe(p, ERROR_LIMIT)}")
    if r.unknown_keys:
        _unknown_keys(r, console)
    if r.merge_claims:
        _merge_claims(r, console)
    _metadata_and_hashes(r, console)
    if r.scan is not None:
        _scan(r, console)


def _identity(r: InspectReport, console: Console, colour: str) -> None:
    """Family, variant, kind, format and why."""
    ident = _kv_table("Identity")
    ident.add_row("family", f"{safe(r.family_name)} [{colour}]({r.confidence} confidence)[/]")
    if r.variants:
        ident.add_row("variant", _join(r.variants))
    ident.add_row("kind", safe(r.kind))
    ident.add_row(
        "format", f"{safe(r.format)}, {len(r.conventions) and _join(r.conventions, ' / ')} key convention"
    )
    for reason in r.reasons:
        ident.add_row("because", safe(reason))
    for n in r.nonstandard:
        ident.add_row("non-standard", safe(n))
    if r.prediction:
        _prediction(r.prediction, ident)
    for m in r.markers:
        ident.add_row("marker", safe(m))
    for k, v in r.extras.items():
        ident.add_row(safe(k), safe(v))
    console.print(ident)


def _prediction(p: Prediction, table: Table) -> None:
    """The summary line, then one line per piece of evidence and the notes."""
    how = "" if p.conflicts or p.certainty == "unknown" else f" [dim]({safe(p.certainty)})[/]"
    table.add_row("prediction", safe(p.summary()) + how)
    for e in p.evidence:
        says = LABELS.get(e.says, "unknown") if e.says != "unknown" else ""
        if e.zero_terminal_snr is not None:
            says += (", " if says else "") + f"zero terminal SNR {'yes' if e.zero_terminal_snr else 'no'}"
        head = f"{e.source}: {says or 'nothing'} ({e.strength}{'' if e.counted else ', not counted'})"
        table.add_row("  evidence", f"{safe(head)} [dim]{safe(e.detail)}[/]")
    for n in p.notes:
        table.add_row("  [yellow]note[/]", safe(n))


def _state(r: InspectReport, console: Console) -> None:
    """Components, what is missing, EMA and schedule."""
    if r.components:
        _components(r, console)
    if r.missing and not (r.loading is not None and r.loading.companions):  # else "How to load" says it
        console.print("[yellow]missing:[/] " + _join(r.missing, "; "))
    if r.ema is not None:
        state = "complete" if r.ema.complete else f"incomplete ({r.ema.tensors} of {r.ema.expected} tensors)"
        console.print(f"[bold cyan]EMA:[/] {state}")
    if r.schedule is not None:
        console.print(f"[bold cyan]schedule:[/] {safe(r.schedule.description)}", highlight=False)


def _precision(r: InspectReport, console: Console) -> None:
    """Tensors and bytes per dtype."""
    dt = Table(title="Precision", title_justify="left")
    for col in ("dtype", "tensors", "bytes"):
        dt.add_column(col, justify="right" if col != "dtype" else "left")
    for d, v in r.dtypes.items():
        dt.add_row(safe(d), str(v["tensors"]), human_bytes(v["bytes"]))
    console.print(dt)
    if r.bytes_beyond_fp16:
        console.print(f"{human_bytes(r.bytes_beyond_fp16)} spent on precision beyond fp16")


def _quantisation(r: InspectReport, console: Console) -> None:
    """Schemes, bits per weight, companions and memory of a quantised file."""
    q = r.quantisation
    qt = Table(title="Quantisation", title_justify="left")
    for col in ("scheme", "tensors", "params", "bits/weight", "bytes"):
        qt.add_column(col, justify="left" if col == "scheme" else "right")
    for s in q.schemes:
        qt.add_row(
            safe(s.scheme),
            str(s.tensors),
            human_count(s.params),
            f"{s.bits_per_weight:.2f}",
            human_bytes(s.bytes),
        )
    console.print(qt)
    console.print(Text(q.origin), highlight=False)
    if q.companions:
        console.print(
            f"{plural(q.companions, 'companion tensor')} (scales, absmax blocks, code books) belong to these "
            "weights, not unknown keys",
            highlight=False,
        )
    for m in q.markers:
        console.print(Text(f"marker: {printable(m, NAME_LIMIT)}"), highlight=False)
    console.print(
        f"weights in memory: {human_bytes(q.bytes_stored)} kept quantised ({q.bits_per_weight:.2f} bits per "
        f"weight over the file); {human_bytes(q.bytes_bf16)} dequantised to bf16",
        highlight=False,
    )


def _lora(r: InspectReport, console: Console) -> None:
    """A LoRA file: network, modules, ranks and targets."""
    lt = _kv_table("LoRA")
    lo = r.lora
    lt.add_row("network", f"{safe(lo.network)} ({safe(lo.convention)} keys)")
    lt.add_row("modules", str(lo.modules) + (f" ({lo.conv_modules} conv)" if lo.conv_modules else ""))
    lt.add_row("ranks", _join(f"{k} ×{v}" for k, v in lo.ranks.items()) or "n/a")
    lt.add_row("alpha", _join(f"{k} ×{v}" for k, v in lo.alphas.items()) or "n/a")
    lt.add_row("targets", _join(f"{k} {v}" for k, v in lo.components.items()))
    lt.add_row("layer types", _join(f"{k} {v}" for k, v in lo.layer_types.items()))
    console.print(lt)


def _how_to_load(r: InspectReport, console: Console) -> None:
    """Loader per tool, folder, and the companion files the file lacks (a few wrapped lines)."""
    a = r.loading
    head = f"How to load ({a.family_name}, {a.kind_label})" if a.known else "How to load"
    t = _kv_table("")
    console.print(Text(printable(head), style="italic"))

    def row(key: str, text: str, folder: str = "") -> None:
        t.add_row(key, Text(printable(text + (f", in {folder}" if folder else "")), overflow="fold"))

    if a.known or a.comfy != "unknown":
        row("ComfyUI", a.comfy, a.comfy_folder)
    if a.known:
        row("diffusers", a.diffusers)
        row("A1111", a.a1111)
        row("Forge", a.forge, a.webui_folder)
    for c in a.companions:
        row("optional" if c.optional else "also needs", f"{c.what}: {c.comfy}", c.folder)
    for n in a.notes:
        row("note", n)
    console.print(t)


def _unknown_keys(r: InspectReport, console: Console) -> None:
    """The keys sdlens does not recognise (the first 20)."""
    title = f"Keys sdlens does not recognise ({len(r.unknown_keys)}; kept as information, not junk)"

    def table(why: bool) -> Table:
        ut = Table(title=title, title_justify="left")
        for col in ("key", "shape", "dtype", "size", *(["why"] if why else [])):
            ut.add_column(col, no_wrap=col != "why")
        for u in r.unknown_keys[:20]:
            ut.add_row(
                safe(u["key"]),
                safe(u["shape"]),
                safe(u["dtype"]),
                human_bytes(u["bytes"]),
                *([safe(u["why"])] if why else []),
            )
        return ut

    if fits(console, table(False), spare=24):  # room left for "why", wrapped at its spaces
        console.print(table(True))
    else:  # narrow: one key a line, its details under it
        console.print(title, style="italic", highlight=False)
        for u in r.unknown_keys[:20]:
            path_line(console, "", printable(u["key"], NAME_LIMIT))
            console.print(
                f"    {safe(u['shape'])} {safe(u['dtype'])} {human_bytes(u['bytes'])}: {safe(u['why'])}",
                highlight=False,
            )
    if len(r.unknown_keys) > 20:
        console.print(f"  … {len(r.unknown_keys) - 20} more in --json", highlight=False)


def _parent_line(p) -> str:
    ids = [h for h in (p.legacy_hash, p.short_hash) if h and h not in (p.name or "")]
    return f"{p.label} = {p.name or '(no name)'}" + (f" [{' / '.join(ids)}]" if ids else "")


def _claim_lines(c, depth: int = 0) -> list[tuple[str, str]]:
    """(indent, text) lines of one claim and, indented, its parents' own claims (a few levels)."""
    pad = "  " * depth
    head = f"{c.subject} was itself made by {c.tool} (in its own letters): " if c.subject else ""
    lines = [(pad, head + c.formula)]
    lines += [(pad + "  ", _parent_line(p)) for p in c.parents]
    lines += [(pad + "  ", f"note: {n}") for n in c.notes[:6]]
    if depth < 3:
        for sub in c.parents_claims[:6]:
            lines += _claim_lines(sub, depth + 1)
    elif c.parents_claims:
        lines.append((pad + "  ", f"… {len(c.parents_claims)} older recipes in --json"))
    return lines


def _merge_claims(r: InspectReport, console: Console) -> None:
    """The recipes merge tools wrote into the metadata: claims, not evidence (``sdlens recipe`` checks them)."""
    for c in r.merge_claims[:8]:
        console.print(Text(f"Merge recipe (claimed by {printable(c.tool)})", style="italic"))
        for pad, line in _claim_lines(c):
            console.print(Text(pad + "  " + printable(line)), soft_wrap=True)
    if len(r.merge_claims) > 8:
        console.print(f"  … {len(r.merge_claims) - 8} more recipes in --json", highlight=False)


def _metadata_and_hashes(r: InspectReport, console: Console) -> None:
    """Metadata fields, then the hashes whole."""
    md = r.metadata
    if md.count:
        rows = [(f"modelspec.{k}", v) for k, v in md.modelspec.items()] + list(md.training.items())
        if md.top_tags:
            rows.append(("top tags", ", ".join(f"{t} ({n})" for t, n in md.top_tags)))
        rows += list(md.other.items())[:15]
        _kv_whole(console, f"Metadata ({plural(md.count, 'field')})", rows)
    for h in r.hashes or ():  # whole, outside any table: hashes are copied and searched for
        path_line(console, "Hashes of", printable(h.path.rsplit("/", 1)[-1], NAME_LIMIT))
        for label, value in (("sha256", h.sha256), ("AutoV2", h.autov2), ("old A1111", h.a1111_old)):
            console.print(Text.assemble("  ", (f"{label:<10}", "bold cyan"), " ", value), soft_wrap=True)


def _scan(r: InspectReport, console: Console) -> None:
    """The scan's verdict and the tensors that are zero by design."""
    s = r.scan
    ok = not (s.nan or s.inf or s.all_zero)
    console.print(
        Group(
            Text(
                f"scan: {plural(s.tensors, 'tensor')}, {human_bytes(s.bytes)} read: "
                + ("no NaN/Inf, no all-zero tensors" if ok else "see problems above"),
                style="green" if ok else "red",
            )
        )
    )
    if s.zero_by_design:
        reasons: dict[str, list[str]] = {}
        for k, why in s.zero_by_design.items():
            reasons.setdefault(why, []).append(k)
        for why, keys in reasons.items():
            more = f" +{len(keys) - 3} more" if len(keys) > 3 else ""
            console.print(
                f"  zero by design (not a problem): {plural(len(keys), 'tensor')}"
                f" — {safe(why)}: {_join(keys[:3])}{more}",
                highlight=False,
                soft_wrap=True,
            )
