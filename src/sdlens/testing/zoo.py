"""The synthetic model zoo: every family and variant sdlens knows, as real files with known ground truth.

Each entry is built from real diffusers / transformers classes (random weights, real key names) by
``zoo_unet`` (SD1/SD2/SDXL), ``zoo_dit`` (SD3, FLUX, AuraFlow, HunyuanDiT, PixArt, ControlNet) and
``zoo_lora``, saved the way users' files are saved, and carries the truth inspect must find.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdlens.testing.writers import save_ckpt, save_safetensors

F16, BF16 = torch.float16, torch.bfloat16


@dataclass
class Truth:
    family: str
    kind: str
    variants: tuple[str, ...] = ()
    precision: str | None = None
    conventions: tuple[str, ...] = ()  # must all appear among the report's conventions
    ema: bool | None = None  # EMA present and complete
    problem: str | None = None  # a substring of one reported problem
    unknown_key: str | None = None
    lora: dict[str, Any] = field(default_factory=dict)  # network / arch / rank / modules
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class ZooEntry:
    name: str
    path: Path
    truth: Truth

    @property
    def truth_text(self) -> str:
        t = self.truth
        return f"{t.family} · {t.kind}" + (f" · {', '.join(t.variants)}" if t.variants else "")

    def mismatches(self, report) -> list[str]:
        """What the report gets wrong about this entry (empty when it matches the ground truth)."""
        t, r, out = self.truth, report, []
        if r.family != t.family:
            out.append(f"family {r.family!r} != {t.family!r}")
        if r.kind != t.kind:
            out.append(f"kind {r.kind!r} != {t.kind!r}")
        out += [f"variant {v!r} missing" for v in t.variants if v not in r.variants]
        if t.precision and r.precision != t.precision:
            out.append(f"precision {r.precision!r} != {t.precision!r}")
        out += [f"convention {c!r} missing" for c in t.conventions if c not in r.conventions]
        if t.ema is not None and (r.ema is not None and r.ema.complete) != t.ema:
            out.append(f"EMA {r.ema} != {t.ema}")
        if t.problem and not any(t.problem in p for p in r.problems):
            out.append(f"problem {t.problem!r} not reported")
        if not t.problem and r.problems:
            out.append(f"unexpected problems {r.problems}")
        if t.unknown_key and t.unknown_key not in [u["key"] for u in r.unknown_keys]:
            out.append(f"unknown key {t.unknown_key!r} not listed")
        for k, v in t.extras.items():
            if r.extras.get(k) != v:
                out.append(f"extra {k}={r.extras.get(k)!r} != {v!r}")
        if t.lora:
            lo = r.lora
            if lo is None:
                out.append("no LoRA analysis")
            else:
                if lo.network != t.lora["network"]:
                    out.append(f"network {lo.network!r} != {t.lora['network']!r}")
                if list(lo.ranks) != [t.lora["rank"]]:
                    out.append(f"ranks {lo.ranks} != {t.lora['rank']}")
                if lo.modules != t.lora["modules"]:
                    out.append(f"modules {lo.modules} != {t.lora['modules']}")
        return out

    def matches(self, report) -> bool:
        return not self.mismatches(report)


# --------------------------------------------------------------------------- builders


def _unet(family: str, **kw: Any) -> dict[str, torch.Tensor]:
    from sdlens.testing.zoo_unet import build_single_file

    return build_single_file(family, **kw)


def _dit(family: str, **kw: Any) -> dict[str, torch.Tensor]:
    from sdlens.testing.zoo_dit import build_single_file

    return build_single_file(family, **kw)


def _broken_position_ids(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The merge bug: position_ids stored as floats that are no longer exact integers."""
    for k in sd:
        if k.endswith("position_ids"):
            bad = torch.arange(sd[k].numel(), dtype=torch.float32).reshape(sd[k].shape)
            bad[0, 40:] += 0.0002 * torch.arange(bad.shape[1] - 40)
            sd[k] = bad
    return sd


def realise_small_buffers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """In a full-size meta (sparse) build, give the few buffers inspect reads their real values."""
    from sdlens.testing.zoo_unet import schedule_buffers

    sched = schedule_buffers()
    for k, t in sd.items():
        if k.endswith("position_ids"):
            sd[k] = torch.arange(t.numel(), dtype=torch.int64).reshape(t.shape)
        elif k in sched:
            sd[k] = sched[k].to(t.dtype)
    return sd


def _strip(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _lora(kind: str, arch: str) -> tuple[Callable[[Path], None], Truth]:
    from sdlens.testing.zoo_lora import build_lora, lora_truth

    t = lora_truth(kind, arch=arch)
    networks = {"lora": "LoRA", "locon": "LoCon", "loha": "LoHa", "lokr": "LoKr", "dora": "DoRA"}
    truth = Truth(
        {"flux": "flux_dev"}.get(arch, arch),
        "LoRA",
        (networks[t["network_type"]],),
        conventions=(t["key_format"],),
        lora={"network": networks[t["network_type"]], "rank": t["rank"], "modules": t["n_modules"]},
    )

    def write(path: Path) -> None:
        tensors, meta = build_lora(kind, arch=arch)
        save_safetensors(tensors, path, meta)

    return write, truth


def _st(
    make: Callable[[], dict[str, torch.Tensor]], metadata: dict[str, str] | None = None
) -> Callable[[Path], None]:
    return lambda path: save_safetensors(make(), path, metadata)


def _ck(make: Callable[[], dict[str, torch.Tensor]], legacy: bool = False) -> Callable[[Path], None]:
    extras = {"epoch": 6, "global_step": 470000}
    return lambda path: save_ckpt(make(), path, extras=extras, legacy=legacy)


def _folder(family: str) -> Callable[[Path], None]:
    from sdlens.testing.zoo_unet import write_diffusers_folder

    return lambda path: write_diffusers_folder(family, path)


def zoo_table() -> list[tuple[str, str, Callable[[Path], None], Truth]]:
    """(name, file name, writer, truth) for every zoo entry."""
    full = "full model"
    rows: list[tuple[str, str, Callable[[Path], None], Truth]] = [
        (
            "sd1_fp16",
            "sd1_fp16.safetensors",
            _st(lambda: _unet("sd1", dtype=F16)),
            Truth("sd1", full, precision="fp16", conventions=("ldm",)),
        ),
        (
            "sd1_ema_ckpt",
            "sd1_ema.ckpt",
            _ck(lambda: _unet("sd1", ema=True)),
            Truth("sd1", full, precision="fp32", ema=True, extras={"epoch": 6, "global_step": 470000}),
        ),
        (
            "sd1_legacy_ckpt",
            "sd1_legacy.ckpt",
            _ck(lambda: _unet("sd1", seed=1), legacy=True),
            Truth("sd1", full),
        ),
        (
            "sd1_nai",
            "sd1_nai_clip.safetensors",
            _st(lambda: _unet("sd1", nai_clip=True, dtype=F16)),
            Truth("sd1", full, conventions=("nai",)),
        ),
        (
            "sd1_bf16",
            "sd1_bf16.safetensors",
            _st(lambda: _unet("sd1", dtype=BF16)),
            Truth("sd1", full, precision="bf16"),
        ),
        (
            "sd1_inpaint",
            "sd1_inpainting.safetensors",
            _st(lambda: _unet("sd1", in_channels=9, dtype=F16)),
            Truth("sd1", full, ("inpainting",)),
        ),
        (
            "sd1_pix2pix",
            "sd1_ip2p.safetensors",
            _st(lambda: _unet("sd1", in_channels=8, dtype=F16)),
            Truth("sd1", full, ("instruct-pix2pix",)),
        ),
        (
            "sd1_extra_keys",
            "sd1_extra_keys.safetensors",
            _st(lambda: {**_unet("sd1", dtype=F16), "my_trainer.step_scale": torch.ones(3)}),
            Truth("sd1", full, unknown_key="my_trainer.step_scale"),
        ),
        (
            "sd2_fp16",
            "sd2_fp16.safetensors",
            _st(lambda: _unet("sd2", dtype=F16)),
            Truth("sd2", full, precision="fp16", conventions=("ldm",)),
        ),
        (
            "sdxl_fp16",
            "sdxl_fp16.safetensors",
            _st(
                lambda: _unet("sdxl", dtype=F16),
                {"modelspec.architecture": "stable-diffusion-xl-v1-base", "modelspec.title": "zoo SDXL"},
            ),
            Truth("sdxl", full, precision="fp16", conventions=("ldm", "sgm")),
        ),
        (
            "sdxl_broken_pos",
            "sdxl_broken_position_ids.safetensors",
            _st(lambda: _broken_position_ids(_unet("sdxl", dtype=F16, seed=2))),
            Truth("sdxl", full, problem="broken position_ids"),
        ),
        (
            "sdxl_refiner",
            "sdxl_refiner.safetensors",
            _st(lambda: _unet("sdxl_refiner", dtype=F16)),
            Truth("sdxl_refiner", full),
        ),
        (
            "sdxl_diffusers",
            "sdxl_diffusers",
            _folder("sdxl"),
            Truth("sdxl", full, conventions=("diffusers",)),
        ),
        (
            "sdxl_full_fp16",
            "sdxl_full_fp16.safetensors",
            _st(lambda: realise_small_buffers(_unet("sdxl", size="full", dtype=F16))),
            Truth("sdxl", full, precision="fp16"),
        ),
        (
            "sd1_full_ema_fp32",
            "sd1_full_ema_fp32.safetensors",
            _st(lambda: realise_small_buffers(_unet("sd1", size="full", ema=True))),
            Truth("sd1", full, precision="fp32", ema=True),
        ),
        (
            "sdxl_unet_only",
            "sdxl_unet.safetensors",
            _st(lambda: _strip(_unet("sdxl", dtype=F16), "model.diffusion_model.")),
            Truth("sdxl", "denoiser only"),
        ),
        (
            "vae_sd",
            "sd_vae.safetensors",
            _st(lambda: _strip(_unet("sd1", dtype=F16), "first_stage_model.")),
            Truth("unknown", "VAE"),
        ),
        (
            "sdxl_text_encoders",
            "sdxl_text_encoders.safetensors",
            _st(lambda: {k: v for k, v in _unet("sdxl", dtype=F16).items() if k.startswith("conditioner.")}),
            Truth("sdxl", "text encoders"),
        ),
        (
            "sd3_medium",
            "sd3_medium_incl_clips_t5.safetensors",
            _st(lambda: _dit("sd3", with_encoders=True, with_vae=True, dtype=F16)),
            Truth("sd3", full, conventions=("ldm", "comfy")),
        ),
        (
            "sd35_medium",
            "sd3.5_medium.safetensors",
            _st(lambda: _dit("sd35m", dtype=F16)),
            Truth("sd35m", "denoiser only"),
        ),
        (
            "sd35_large",
            "sd3.5_large.safetensors",
            _st(lambda: _dit("sd35", dtype=F16)),
            Truth("sd35", "denoiser only"),
        ),
        (
            "flux_dev",
            "flux1-dev.safetensors",
            _st(lambda: _dit("flux_dev", dtype=BF16)),
            Truth("flux_dev", "denoiser only", precision="bf16"),
        ),
        (
            "flux_schnell",
            "flux1-schnell.safetensors",
            _st(lambda: _dit("flux_schnell", dtype=BF16)),
            Truth("flux_schnell", "denoiser only"),
        ),
        (
            "flux_fill",
            "flux1-fill-dev.safetensors",
            _st(lambda: _dit("flux_dev", variant="fill", dtype=BF16)),
            Truth("flux_dev", "denoiser only", ("Fill (inpainting)",)),
        ),
        (
            "flux_bundled",
            "flux1-dev-all-in-one.safetensors",
            _st(lambda: _dit("flux_dev", with_encoders=True, with_vae=True, dtype=F16)),
            Truth("flux_dev", full),
        ),
        (
            "auraflow",
            "aura_flow_0.2.safetensors",
            _st(lambda: _dit("auraflow", dtype=F16)),
            Truth("auraflow", "denoiser only"),
        ),
        (
            "hunyuandit",
            "hunyuan_dit.safetensors",
            _st(lambda: _dit("hunyuandit", dtype=F16)),
            Truth("hunyuandit", "denoiser only"),
        ),
        (
            "pixart_alpha",
            "pixart_alpha.safetensors",
            _st(lambda: _dit("pixart_alpha", dtype=F16)),
            Truth("pixart_alpha", "denoiser only"),
        ),
        (
            "pixart_sigma",
            "pixart_sigma.safetensors",
            _st(lambda: _dit("pixart_sigma", dtype=F16)),
            Truth("pixart_sigma", "denoiser only"),
        ),
        (
            "kl_f8_c16",
            "flux_ae.safetensors",
            _st(lambda: _strip(_dit_vae(), "first_stage_model.")),
            Truth("unknown", "VAE"),
        ),
        (
            "controlnet_sd1",
            "control_sd15_canny.safetensors",
            _st(lambda: _control("sd1", "original")),
            Truth("sd1", "ControlNet"),
        ),
        (
            "controlnet_sdxl",
            "controlnet_sdxl.safetensors",
            _st(lambda: _control("sdxl", "original")),
            Truth("sdxl", "ControlNet"),
        ),
        (
            "controlnet_sd1_diffusers",
            "controlnet_sd15_diffusers.safetensors",
            _st(lambda: _control("sd1", "diffusers")),
            Truth("sd1", "ControlNet"),
        ),
    ]
    rows += _new_family_rows()
    for kind, arch in (
        ("kohya", "sd1"),
        ("locon", "sd1"),
        ("loha", "sdxl"),
        ("lokr", "sd1"),
        ("dora", "sdxl"),
        ("peft", "sdxl"),
        ("kohya", "flux"),
        ("kohya", "sdxl"),
    ):
        write, truth = _lora(kind, arch)
        rows.append((f"lora_{kind}_{arch}", f"lora_{kind}_{arch}.safetensors", write, truth))
    return rows


def _new_family_rows() -> list[tuple[str, str, Callable[[Path], None], Truth]]:
    """One tiny denoiser file per family added with the records of issue 15, in its original layout where it has
    one (HiDream ships the diffusers names)."""
    from sdlens.arch import families
    from sdlens.testing import zoo_new_a, zoo_new_b

    rows = [
        (
            fid,
            f"{fid}.safetensors",
            _st(lambda fid=fid: zoo_new_a.original_state_dict(fid)),
            Truth(fid, "denoiser only"),
        )
        for fid in zoo_new_a.FAMILY_IDS
        if fid != "sdxl"
    ]
    for fid in zoo_new_b.FAMILY_IDS:
        layout = (
            "original" if families.get(fid).denoiser.keymap else "diffusers"
        )  # HiDream: diffusers names only
        rows.append(
            (
                fid,
                f"{fid}.safetensors",
                _st(lambda fid=fid, layout=layout: zoo_new_b.build_denoiser(fid, layout=layout)),
                Truth(fid, "denoiser only"),
            )
        )
    return rows


def _dit_vae() -> dict[str, torch.Tensor]:
    from sdlens.testing.zoo_dit import build_vae16

    return build_vae16(dtype=F16)


def _control(kind: str, layout: str) -> dict[str, torch.Tensor]:
    from sdlens.testing.zoo_dit import build_controlnet

    return build_controlnet(kind, layout=layout, dtype=F16)


def build_zoo(
    root: str | Path, names: list[str] | None = None, *, overwrite: bool = False
) -> dict[str, ZooEntry]:
    """Write the zoo (or the named entries) under ``root``; existing files are reused unless ``overwrite``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, ZooEntry] = {}
    for name, filename, write, truth in zoo_table():
        if names is not None and name not in names:
            continue
        path = root / filename
        if overwrite or not path.exists():
            write(path)
        out[name] = ZooEntry(name, path, truth)
    return out
