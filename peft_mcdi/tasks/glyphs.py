"""An Omniglot-like few-shot dataset rendered from the Noto fonts that Debian installs.

Omniglot (1,623 characters of 50 alphabets, 20 people drawing each once) is the standard few-shot benchmark, but its
licence and download do not fit an offline build. The Noto families of ``fonts-noto-core``, ``fonts-noto-extra`` and
``fonts-noto-ui-core`` cover ~140 scripts, so the same *structure* can be rebuilt from them:

* a **class** is one letter (Unicode category Lu/Ll/Lt/Lo, no decomposition, mapped by some font's cmap, rendering
  neither empty nor as the .notdef box) of a **script**, Omniglot's alphabet. The script is the Unicode Script
  property as bundled by fontTools (``fontTools.unicodedata.script``) rather than the first words of
  ``unicodedata.name``: names get it wrong for "MODIFIER LETTER …", "CANADIAN SYLLABICS …", "OLD ITALIC …" and
  Coptic letters in the Greek block. Logographies and huge syllabaries (``exclude_scripts``) are left out; each
  script keeps its ``max_chars_per_script`` lowest code points (Unicode lists a script's core alphabet first);
* each class has ``drawers_per_char`` images ("drawers"): renders from *every* Noto family/weight/width that covers the
  letter (Sans, Serif, Mono, UI, Display, Looped, Kufi, …), each pushed through a random affine map, a stroke-width
  change and an elastic deformation, so scripts that only one font covers still get distinct samples;
* the background/evaluation split is **by script**, as in Omniglot: no evaluation alphabet was seen in training;
* **homoglyphs** are removed: Latin A, Greek Α, Cyrillic А, Lisu ꓮ are one picture, and a picture seen in training
  must not come back as a "new" evaluation class. Every letter gets a canonical render (its preferred font's Regular
  weight, no augmentation, NotoSans for Latin/Greek/Cyrillic) and, where a serif font covers it, a second one in
  that font (some scripts' only font has serifs); letters are visited background first, then by code point, and one
  is dropped when one of its canonical renders correlates ≥ ``homoglyph_threshold`` with one of an already kept
  letter of *another* script (:func:`canonical_similarity`). So no two kept letters of different scripts look alike,
  and of Latin A / Greek Α / Cyrillic А only the background one (or the lowest code point) survives. Within a script
  a stricter test merges letters that are one picture once scaled to fit (``s``/``S``, Cherokee ``Ꭰ``/``ꭰ``).

Images are 28×28 uint8, **white glyph (255) on black (0)**, like inverted Omniglot and like every other image set of
the vision suites (the background is zero, which is what convolutions and zero-padding expect). Each glyph is
centred by its ink bounding box and scaled so its longer side fills ``glyph_fraction`` of the image; renders are made
at 4× resolution and box-filtered down (anti-aliasing), then each image is scaled so its brightest pixel is 255.

Each image also records its *style domain* (sans / serif / mono / display-other, from the font file name) and its
font file, for domain-generalisation splits later.

The build is deterministic given the config and the installed fonts (same config → byte-identical arrays) and is
cached as one ``.npz`` under ``cache_root() / "glyphs"``, keyed by the config, the font files (names and sizes) and
the versions of the libraries that decide the pixels.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from peft_mcdi.utils import DictConfigMixin, atomic_write, cache_root, stable_hash


logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLITS = ("background", "evaluation")
STYLE_NAMES = ("sans", "serif", "mono", "display-other")
FONT_INSTALL_HINT = (
    "install the Debian packages fonts-noto-core fonts-noto-extra fonts-noto-ui-core "
    "(`make run` / scripts/setup.sh installs them)"
)
# Logographic scripts and huge syllabaries: thousands of signs with no alphabet-like core, and (for Han/Hangul) no
# fonts among the three packages anyway. Overridable through GlyphConfig.exclude_scripts.
DEFAULT_EXCLUDED_SCRIPTS = (
    "Han", "Hangul", "Hiragana", "Katakana", "Yi", "Tangut", "Nushu", "Khitan Small Script", "Cuneiform",
    "Egyptian Hieroglyphs", "Anatolian Hieroglyphs",
)  # fmt: skip
# Not scripts at all: punctuation-like letters shared by many scripts, combining marks.
_NON_SCRIPTS = {"Zyyy", "Zinh", "Zzzz"}
_LETTER_CATEGORIES = {"Lu", "Ll", "Lt", "Lo"}
_HIRES = 4  # affine map at 4× the output size; stroke and elastic at 2×; then box-filtered down
_SOURCE_EM = 96  # font size (px) of the source renders
_POOL_FACTOR = 4  # candidates per script examined for duplicates: 4 × max_chars_per_script lowest code points
_INK_EPS = 8.0  # a render with less total ink (sum of 0..255 values at the output size) counts as empty


class GlyphCacheError(RuntimeError):
    """A cached glyph dataset that cannot be read; the message names the file to delete."""


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class GlyphConfig(DictConfigMixin):
    """What decides the dataset's pixels and classes; every field is part of the cache key."""

    image_size: int = field(default=28, metadata=_help("Side of the square images (px); Omniglot-style 28."))
    drawers_per_char: int = field(default=20, metadata=_help("Images per class (Omniglot has 20 drawers)."))
    min_chars_per_script: int = field(
        default=20, metadata=_help("Scripts with fewer letters (after de-duplication) are dropped.")
    )
    max_chars_per_script: int = field(
        default=25, metadata=_help("Letters kept per script: its lowest code points (the core alphabet) first.")
    )
    background_fraction: float = field(default=0.6, metadata=_help("Share of scripts in the background split."))
    seed: int = field(default=0, metadata=_help("Seed of the script split and of every augmentation."))
    font_dir: str = field(default="/usr/share/fonts/truetype/noto", metadata=_help("Folder of Noto .ttf files."))
    max_scripts: int | None = field(
        default=None, metadata=_help("Keep this many scripts, chosen by the seed (tiny test configs); None = all.")
    )
    scripts: tuple[str, ...] | None = field(
        default=None, metadata=_help("Exactly these scripts (Unicode names, e.g. 'Latin'); None = all eligible.")
    )
    exclude_scripts: tuple[str, ...] = field(
        default=DEFAULT_EXCLUDED_SCRIPTS, metadata=_help("Scripts never used (logographies, huge syllabaries).")
    )
    glyph_fraction: float = field(
        default=0.72, metadata=_help("Longer side of the glyph's ink box / image side, before augmentation.")
    )
    rotation_deg: float = field(default=10.0, metadata=_help("Rotation drawn uniformly in ±this (degrees)."))
    scale_range: tuple[float, float] = field(
        default=(0.85, 1.1), metadata=_help("Scale factor drawn uniformly in [low, high].")
    )
    shear_deg: float = field(default=8.0, metadata=_help("Horizontal shear angle drawn uniformly in ±this."))
    translate_px: float = field(default=1.5, metadata=_help("Shift drawn uniformly in ±this (output pixels)."))
    stroke_px: float = field(
        default=0.5, metadata=_help("Largest stroke dilation/erosion (output pixels; steps of 0.5 px).")
    )
    elastic_alpha: float = field(default=0.8, metadata=_help("Std of the elastic displacement (output pixels)."))
    elastic_sigma: float = field(
        default=3.0, metadata=_help("Smoothness of the elastic field: Gaussian sigma (output pixels).")
    )
    homoglyph_threshold: float = field(
        default=0.93,
        metadata=_help("Letters of different scripts whose canonical renders correlate this much are one picture."),
    )
    duplicate_threshold: float = field(
        default=0.97, metadata=_help("Correlation above which two letters of one script may be one picture...")
    )
    duplicate_pixels: int = field(
        default=2, metadata=_help("...if at most this many ink pixels differ by more than 1 px (o/O, not ج/ح).")
    )

    def __post_init__(self):
        if self.scripts is not None:
            if isinstance(self.scripts, str) or not all(isinstance(s, str) for s in self.scripts):
                raise ValueError(f"GlyphConfig.scripts={self.scripts!r}: expected a list of script names or None.")
            self.scripts = tuple(self.scripts)
        if isinstance(self.exclude_scripts, str) or not all(isinstance(s, str) for s in self.exclude_scripts):
            raise ValueError(f"GlyphConfig.exclude_scripts={self.exclude_scripts!r}: expected a list of script names.")
        self.exclude_scripts = tuple(self.exclude_scripts)
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1] <= 2:
            raise ValueError(
                f"GlyphConfig.scale_range={self.scale_range!r}: expected [low, high] with 0 < low ≤ high ≤ 2."
            )
        self.scale_range = (float(self.scale_range[0]), float(self.scale_range[1]))
        ints = {
            "image_size": (8, 256),
            "drawers_per_char": (1, 10_000),
            "min_chars_per_script": (1, 10_000),
            "max_chars_per_script": (1, 10_000),
            "duplicate_pixels": (0, 10_000),
        }
        for name, (low, high) in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"GlyphConfig.{name}={value!r}: expected an integer in [{low}, {high}].")
        if self.max_chars_per_script < self.min_chars_per_script:
            raise ValueError(
                f"GlyphConfig.max_chars_per_script={self.max_chars_per_script} is below "
                f"min_chars_per_script={self.min_chars_per_script}: expected max ≥ min."
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"GlyphConfig.seed={self.seed!r}: expected a non-negative integer.")
        if self.max_scripts is not None and (not isinstance(self.max_scripts, int) or self.max_scripts < 2):
            raise ValueError(f"GlyphConfig.max_scripts={self.max_scripts!r}: expected None or an integer ≥ 2.")
        floats = {
            "background_fraction": (0.0, 1.0, False),
            "glyph_fraction": (0.0, 1.0, True),
            "homoglyph_threshold": (0.0, 1.0, True),
            "duplicate_threshold": (0.0, 1.0, True),
            "rotation_deg": (0.0, 45.0, True),
            "shear_deg": (0.0, 30.0, True),
            "translate_px": (0.0, 0.25 * self.image_size, True),
            "stroke_px": (0.0, 2.0, True),
            "elastic_alpha": (0.0, 5.0, True),
            "elastic_sigma": (0.5, 0.5 * self.image_size, True),
        }
        for name, (low, high, closed) in floats.items():
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (low <= value <= high if closed else low < value < high)
            if not ok:
                interval = f"[{low}, {high}]" if closed else f"({low}, {high})"
                raise ValueError(f"GlyphConfig.{name}={value!r}: expected a number in {interval}.")


@dataclass
class GlyphDataset:
    """All images of the selected classes; ``labels`` index ``classes``, ``styles`` index ``style_names``."""

    images: np.ndarray  # (n, S, S) uint8, white glyph on black
    labels: np.ndarray  # (n,) int64 class index
    styles: np.ndarray  # (n,) int64 style-domain index into style_names
    fonts: np.ndarray  # (n,) int64 font-file index into font_names
    canonical: np.ndarray  # (C, S, S) uint8 per class: the un-augmented render homoglyph removal compared
    classes: list[dict]  # per class: char, codepoint, name, script, split, font (of the canonical render)
    style_names: list[str]
    font_names: list[str]
    info: dict = field(default_factory=dict)  # build statistics, homoglyph groups, config

    def split(self, name: str) -> GlyphDataset:
        """Only ``name``'s classes, labels re-indexed 0..C-1 in class order (class dicts kept), for training on one
        split without the other's classes leaking into the label space."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {list(SPLITS)}.")
        keep = [i for i, c in enumerate(self.classes) if c["split"] == name]
        remap = np.full(len(self.classes), -1, dtype=np.int64)
        remap[keep] = np.arange(len(keep))
        rows = np.flatnonzero(remap[self.labels] >= 0)
        return GlyphDataset(
            images=self.images[rows],
            labels=remap[self.labels[rows]],
            styles=self.styles[rows],
            fonts=self.fonts[rows],
            canonical=self.canonical[keep],
            classes=[self.classes[i] for i in keep],
            style_names=list(self.style_names),
            font_names=list(self.font_names),
            info=self.info,
        )

    def scripts(self, split: str | None = None) -> list[str]:
        """Sorted script names of ``split``'s classes (all classes when None)."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)} or None.")
        return sorted({c["script"] for c in self.classes if split is None or c["split"] == split})


# ------------------------------------------------------------------------------------------------------ fonts
@dataclass(frozen=True)
class _Font:
    name: str  # file name
    family: str  # file name before the "-"
    style: int  # index into STYLE_NAMES
    letters: frozenset[int]  # code points of usable letters the font maps to a real glyph

    @property
    def canonical_rank(self) -> tuple:
        """Lower = preferred for the canonical render: upright Regular sans of the plainest family (NotoSans before
        NotoSansArmenian before NotoSansArmenianUI), so Latin/Greek/Cyrillic share one design and homoglyphs match."""
        variant = self.name[len(self.family) + 1 : -len(".ttf")]
        return (variant != "Regular", self.style, self.family.endswith("UI"), len(self.family), self.family)


def _style_of(family: str) -> int:
    """Style domain from the family name: Noto names say sans/serif/mono; Kufi, Looped, Nastaliq, Rashi, Display and
    the regional Tifinagh designs are calligraphic or decorative."""
    other = ("Display", "Kufi", "Looped", "Nastaliq", "Rashi", "Traditional", "Music", "Symbols")
    if "Mono" in family:
        return STYLE_NAMES.index("mono")
    if any(word in family for word in other) or (
        family.startswith("NotoSansTifinagh") and family != "NotoSansTifinagh"
    ):
        return STYLE_NAMES.index("display-other")
    if family.startswith(("NotoSerif", "NotoNaskh")):
        return STYLE_NAMES.index("serif")
    return STYLE_NAMES.index("sans")


@functools.cache
def _letter_script(cp: int) -> str | None:
    """The script name of a usable letter, else None: letters only (no modifier letters, which become shapeless
    blobs once scaled to fit), no decomposable letters (À is A plus a mark: Omniglot alphabets are base letters)."""
    from fontTools import unicodedata as ftu

    ch = chr(cp)
    if unicodedata.category(ch) not in _LETTER_CATEGORIES or unicodedata.decomposition(ch):
        return None
    code = ftu.script(ch)
    if code in _NON_SCRIPTS:
        return None
    return ftu.script_name(code)


def _font_files(font_dir: str) -> list[os.DirEntry]:
    path = Path(font_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"font folder {font_dir} does not exist: {FONT_INSTALL_HINT}.")
    entries = sorted((e for e in os.scandir(path) if e.name.endswith(".ttf") and e.is_file()), key=lambda e: e.name)
    if not entries:
        raise FileNotFoundError(f"font folder {font_dir} holds no .ttf files: {FONT_INSTALL_HINT}.")
    return entries


def _font_signature(font_dir: str) -> dict:
    """What the cache key needs to know about the installed fonts and the renderer: file names and sizes (a package
    upgrade changes them), and the versions of FreeType, Pillow, fontTools (script data) and Python's Unicode data."""
    import fontTools
    import PIL
    from PIL import features

    files = [(e.name, e.stat().st_size) for e in _font_files(font_dir)]
    return {
        "files": stable_hash(files, length=32),
        "num_files": len(files),
        "freetype": features.version("freetype2"),
        "pillow": PIL.__version__,
        "fonttools": fontTools.version,
        "unidata": unicodedata.unidata_version,
    }


@functools.lru_cache(maxsize=4)
def _scan_fonts(font_dir: str, signature: str) -> tuple[_Font, ...]:
    """Each font file's usable letters (~3 s for the 1,844 files; memoised per process, keyed by the signature)."""
    from fontTools.ttLib import TTFont

    out = []
    for entry in _font_files(font_dir):
        font = TTFont(entry.path, lazy=True)
        try:
            # Placeholder glyph names: only "is it glyph 0 (.notdef)?" matters, and decoding the real names from the
            # post table would double the scan time.
            font.setGlyphOrder([".notdef"] + [f"g{i}" for i in range(1, font["maxp"].numGlyphs)])
            cmap = font.getBestCmap() or {}
        finally:
            font.close()
        letters = frozenset(cp for cp, glyph in cmap.items() if glyph != ".notdef" and _letter_script(cp))
        family = entry.name.rsplit("-", 1)[0] if "-" in entry.name else entry.name[: -len(".ttf")]
        out.append(_Font(entry.name, family, _style_of(family), letters))
    return tuple(out)


# ------------------------------------------------------------------------------------------------- rendering
class _Renderer:
    """Renders letters with one font at a time (fonts loaded lazily, one held at once: 1,844 FreeType faces would
    cost hundreds of MB), caching each (font, letter) source bitmap for the drawers that share it."""

    def __init__(self, font_dir: str, image_size: int, glyph_fraction: float):
        self.font_dir = Path(font_dir)
        self.size = image_size
        self.box = _HIRES * image_size * glyph_fraction  # longer side of the ink box at 4× resolution
        self._font_name: str | None = None
        self._font = None
        self._sources: dict[int, object] = {}

    def use(self, font_name: str) -> None:
        from PIL import ImageFont

        if font_name != self._font_name:
            self._font = ImageFont.truetype(
                str(self.font_dir / font_name), size=_SOURCE_EM, layout_engine=ImageFont.Layout.BASIC
            )
            self._font_name = font_name
            self._sources = {}

    def source(self, cp: int):
        """The letter's ink, cropped to its bounding box and resized (Lanczos) so its longer side is ``box``: later
        affine maps then only scale by ~0.85–1.1, where bilinear sampling does not alias. None if it has no ink."""
        if cp in self._sources:
            return self._sources[cp]
        from PIL import Image, ImageDraw

        ch = chr(cp)
        x0, y0, x1, y1 = self._font.getbbox(ch)
        img = None
        if x1 > x0 and y1 > y0:
            canvas = Image.new("L", (x1 - x0 + 4, y1 - y0 + 4))
            ImageDraw.Draw(canvas).text((2 - x0, 2 - y0), ch, font=self._font, fill=255)
            ink = canvas.getbbox()
            if ink is not None:
                canvas = canvas.crop(ink)
                w, h = canvas.size
                f = self.box / max(w, h)
                img = canvas.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.LANCZOS)
        self._sources[cp] = img
        return img

    def place(self, src, theta: float = 0.0, scale: float = 1.0, shear: float = 0.0, shift=(0.0, 0.0)) -> np.ndarray:
        """The source placed on a 4× canvas by an affine map about its centre (rotation ``theta`` and shear in
        radians, ``shift`` in output pixels), box-filtered to the 2× working resolution (float32)."""
        from PIL import Image

        hi = _HIRES * self.size
        w, h = src.size
        c, s, t = math.cos(theta), math.sin(theta), math.tan(shear)
        # forward map A = scale · R(theta) · [[1, t], [0, 1]]; PIL wants output → input, i.e. A⁻¹.
        inv = np.linalg.inv(np.array([[c, c * t - s], [s, s * t + c]]) * scale)
        cx, cy = hi / 2 + _HIRES * shift[0], hi / 2 + _HIRES * shift[1]
        coeffs = (
            inv[0, 0], inv[0, 1], w / 2 - inv[0, 0] * cx - inv[0, 1] * cy,
            inv[1, 0], inv[1, 1], h / 2 - inv[1, 0] * cx - inv[1, 1] * cy,
        )  # fmt: skip
        img = src.transform((hi, hi), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)
        return np.asarray(img.reduce(_HIRES // 2), dtype=np.float32)

    def render_clean(self, cp: int) -> np.ndarray | None:
        """The un-augmented output-size render with the current font (the canonical render), None if empty."""
        src = self.source(cp)
        if src is None:
            return None
        img = _finish(self.place(src)[None])[0]
        return img if img.sum(dtype=np.int64) >= _INK_EPS else None


def _finish(batch: np.ndarray) -> np.ndarray:
    """2×-resolution float images → output-size uint8, box-filtered, brightest pixel scaled to 255 (thin weights
    would otherwise be faint grey)."""
    n, w, _ = batch.shape
    small = batch.reshape(n, w // 2, 2, w // 2, 2).mean(axis=(2, 4))
    peak = small.max(axis=(1, 2), keepdims=True)
    small = small * (255.0 / np.maximum(peak, 1e-6))
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def _stroke(batch: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Thicker (radius > 0: grey dilation) or thinner (radius < 0: erosion) strokes, a (2|r|+1)² max/min filter at
    the 2× working resolution, one filter call per radius value. Skipped where it would destroy the letter: an
    erosion that erases more than 60% of the ink (a Thin weight), a dilation that turns a Black weight into a blob
    (more than 40% of the canvas inked)."""
    from scipy import ndimage

    out = batch.copy()
    for r in sorted(set(radius.tolist()) - {0}):
        rows = np.flatnonzero(radius == r)
        size = (1, 2 * abs(r) + 1, 2 * abs(r) + 1)
        changed = (ndimage.maximum_filter if r > 0 else ndimage.minimum_filter)(batch[rows], size=size)
        if r < 0:
            ok = changed.sum(axis=(1, 2)) >= 0.4 * batch[rows].sum(axis=(1, 2))
        else:
            ok = (changed >= 128).mean(axis=(1, 2)) <= 0.4
        out[rows[ok]] = changed[ok]
    return out


def _upsampling_matrix(coarse: int, fine: int) -> np.ndarray:
    """(fine, coarse) linear-interpolation matrix between pixel grids of the same extent (pixel centres aligned)."""
    u = np.clip((np.arange(fine) + 0.5) * coarse / fine - 0.5, 0, coarse - 1)
    i0 = np.floor(u).astype(int)
    i1 = np.minimum(i0 + 1, coarse - 1)
    m = np.zeros((fine, coarse))
    np.add.at(m, (np.arange(fine), i0), 1 - (u - i0))
    np.add.at(m, (np.arange(fine), i1), u - i0)
    return m


def _elastic(batch: np.ndarray, noise: np.ndarray, alpha: float, sigma: float) -> np.ndarray:
    """Elastic deformation (Simard et al. 2003) of a whole batch at once. White noise (n, 2, c, c) on a grid at half
    the output resolution is Gaussian-smoothed over the spatial axes (sigma given in output pixels), scaled to a
    displacement of std ``alpha`` output pixels, upsampled to the batch's resolution by two small matrix products,
    and applied by one 2-D ``map_coordinates`` call on the batch stacked into a tall image (rows of zeros between
    images stand in for the constant border, so no image samples another)."""
    from scipy import ndimage

    n, w, _ = batch.shape
    coarse = noise.shape[-1]
    sigma_c = sigma * coarse / (w / 2)
    field_ = ndimage.gaussian_filter(noise, sigma=(0, 0, sigma_c, sigma_c), mode="constant", truncate=3.0)
    size = 2 * int(3 * sigma_c + 0.5) + 1
    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1
    gain = float(np.sqrt((ndimage.gaussian_filter(delta, sigma_c, mode="constant", truncate=3.0) ** 2).sum()))
    # In float64 each output sums two products of a float32 and a weight (multiples of 1/8 when w = 4·coarse), so
    # the products are exact and BLAS's summation order or thread count cannot change a bit.
    up = _upsampling_matrix(coarse, w)
    field_ = (up @ field_.astype(np.float64) @ up.T).astype(np.float32) * np.float32(alpha * 2 / gain)
    pad = 2
    tall = np.zeros((n, w + pad, w), dtype=np.float32)
    tall[:, :w] = batch
    grid = np.arange(w, dtype=np.float64)
    rows = np.clip(grid[None, :, None] + field_[:, 0], -1.0, float(w))
    rows += (np.arange(n) * (w + pad))[:, None, None]
    cols = grid[None, None, :] + field_[:, 1]
    warped = ndimage.map_coordinates(tall.reshape(n * (w + pad), w), np.stack([rows, cols]), order=1, mode="constant")
    return warped.astype(np.float32)


# ---------------------------------------------------------------------------------------------- similarity
def _blurred_codes(images: np.ndarray) -> np.ndarray:
    """(n, S, S) uint8 renders → (n, S·S) float64 holding integers: Gaussian-blurred (sigma 1 px) so that sub-pixel
    offsets and stroke weight (different fonts draw the same shape thinner or bolder) count little, then rounded so
    that every dot product below is an exact integer: no BLAS summation order or thread count can flip a decision."""
    from scipy import ndimage

    blurred = ndimage.gaussian_filter(images.astype(np.float64), sigma=(0, 1.0, 1.0), mode="constant")
    return np.rint(blurred).reshape(len(images), -1)


def _correlation(qa: np.ndarray, qb: np.ndarray) -> np.ndarray:
    """Pearson correlation of every row of ``qa`` with every row of ``qb`` (integer codes, exact sums)."""
    p = qa.shape[1]
    sa, sb = qa.sum(axis=1), qb.sum(axis=1)
    va = p * np.einsum("ij,ij->i", qa, qa) - sa * sa
    vb = p * np.einsum("ij,ij->i", qb, qb) - sb * sb
    cov = p * (qa @ qb.T) - sa[:, None] * sb[None, :]
    return cov / np.sqrt(np.maximum(va[:, None] * vb[None, :], 1.0))


def canonical_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Similarity (len(a), len(b)) of canonical renders, the measure homoglyph removal thresholds: Pearson
    correlation of the renders blurred by 1 px. Chosen over binarised IoU after inspecting thousands of pairs: IoU
    calls a thin and a bold ``T`` different (0.65) but ``A`` and ``Λ`` the same (0.8); the blurred correlation puts
    cross-script look-alikes above ~0.93 and letters that differ by a bar or a dot below it."""
    return _correlation(_blurred_codes(a), _blurred_codes(b))


def _similar_pairs(codes: np.ndarray, threshold: float, block: int = 1024) -> list[tuple[int, int]]:
    """Pairs (i < j) with correlation ≥ threshold, a block of rows at a time (a default build compares ~7,500
    renders; the full matrix is never held)."""
    pairs = []
    for start in range(0, len(codes), block):
        corr = _correlation(codes[start : start + block], codes)
        rows, cols = np.nonzero(corr >= threshold)
        rows = rows + start
        keep = rows < cols
        pairs.extend(zip(rows[keep].tolist(), cols[keep].tolist()))
    return pairs


def _duplicates(images: np.ndarray, codes: np.ndarray, threshold: float, pixels: int) -> np.ndarray:
    """(n, n) bool: the same picture, for letters of one script. Stricter than the cross-script test: correlation ≥
    ``threshold`` *and* at most ``pixels`` ink pixels of either render lie more than 1 px from the other's ink, so
    a dot (ج vs ح) or a notch keeps two letters apart while o/O or a Cherokee small/capital pair merge."""
    from scipy import ndimage

    ink = images >= 128
    near = ndimage.binary_dilation(ink, structure=np.ones((1, 3, 3), dtype=bool))
    a = ink.reshape(len(ink), -1).astype(np.float64)
    b = near.reshape(len(ink), -1).astype(np.float64)
    outside = a.sum(axis=1)[:, None] - a @ b.T  # ink of i farther than 1 px from j's ink
    return (_correlation(codes, codes) >= threshold) & (outside + outside.T <= pixels)


# ------------------------------------------------------------------------------------------------------ build
def build_glyphs(config: GlyphConfig | None = None, progress: bool = False) -> GlyphDataset:
    """Build the dataset from the fonts, bypassing the cache (``load_glyphs`` is the cached entry point)."""
    config = config or GlyphConfig()
    t0 = time.perf_counter()
    signature = _font_signature(config.font_dir)
    fonts = _scan_fonts(config.font_dir, stable_hash(signature))
    renderer = _Renderer(config.font_dir, config.image_size, config.glyph_fraction)

    # 1. candidates: each script's lowest code points, where Unicode puts a script's core alphabet
    by_script: dict[str, set[int]] = {}
    for font in fonts:
        for cp in font.letters:
            by_script.setdefault(_letter_script(cp), set()).add(cp)
    if config.scripts is not None:
        unknown = sorted(set(config.scripts) - set(by_script))
        if unknown:
            raise ValueError(
                f"GlyphConfig.scripts: no letters of {unknown} in {config.font_dir}; scripts with letters: "
                f"{sorted(by_script)}."
            )
        by_script = {s: cps for s, cps in by_script.items() if s in config.scripts}
    pool = _POOL_FACTOR * config.max_chars_per_script
    candidates = {
        s: sorted(cps)[:pool]
        for s, cps in sorted(by_script.items())
        if s not in config.exclude_scripts and len(cps) >= config.min_chars_per_script
    }

    # 2–4. per script, in seeded order until max_scripts are found (tiny configs render only what they use):
    # canonical renders (the preferred font covering each letter, no augmentation; empty glyphs and tofu dropped),
    # then one class per picture within the script (o/O, Cherokee Ꭰ/ꭰ once scaled to fit; lowest code point kept).
    ranked = sorted(fonts, key=lambda f: f.canonical_rank)
    # A second canonical render in the letter's preferred serif font: some scripts' only font has serifs (Cherokee Ꮇ
    # correlates 0.71 with sans Latin M, 0.98 with NotoSerif's M), so homoglyphs are sought in both designs.
    serif_ranked = [f for f in ranked if f.style == STYLE_NAMES.index("serif")]
    serif_codes: dict[int, np.ndarray] = {}
    canonical_font: dict[int, _Font] = {}
    canon: dict[int, np.ndarray] = {}
    codes: dict[int, np.ndarray] = {}
    tofu: dict[str, np.ndarray | None] = {}
    num_candidates = num_empty = num_duplicates = 0
    names = sorted(candidates)
    chosen: list[str] = []
    for script in [names[i] for i in np.random.default_rng([config.seed, 0x5C41]).permutation(len(names))]:
        if config.max_scripts is not None and len(chosen) >= config.max_scripts:
            break
        cps = candidates[script]
        num_candidates += len(cps)
        for cp in cps:
            canonical_font[cp] = next(f for f in ranked if cp in f.letters)
        for font_name in sorted({canonical_font[cp].name for cp in cps}):
            renderer.use(font_name)
            if font_name not in tofu:
                tofu[font_name] = renderer.render_clean(0x10FFFD)  # unmapped: FreeType draws the .notdef box
            for cp in cps:
                if canonical_font[cp].name == font_name:
                    img = renderer.render_clean(cp)
                    if img is not None and not (tofu[font_name] is not None and np.array_equal(img, tofu[font_name])):
                        canon[cp] = img
        num_empty += sum(cp not in canon for cp in cps)
        cps = [cp for cp in cps if cp in canon]
        if not cps:
            candidates[script] = []
            continue
        codes.update(zip(cps, _blurred_codes(np.stack([canon[cp] for cp in cps]))))
        same = _duplicates(
            np.stack([canon[cp] for cp in cps]), np.stack([codes[cp] for cp in cps]),
            config.duplicate_threshold, config.duplicate_pixels,
        )  # fmt: skip
        kept: list[int] = []
        for i in range(len(cps)):
            if not any(same[i, j] for j in kept):
                kept.append(i)
        num_duplicates += len(cps) - len(kept)
        candidates[script] = cps = [cps[i] for i in kept]
        if len(kept) >= config.min_chars_per_script:
            chosen.append(script)
            for cp in cps:
                font = next((f for f in serif_ranked if cp in f.letters), None)
                if font is not None and font.name != canonical_font[cp].name:
                    renderer.use(font.name)
                    if font.name not in tofu:
                        tofu[font.name] = renderer.render_clean(0x10FFFD)
                    img = renderer.render_clean(cp)
                    if img is not None and not (tofu[font.name] is not None and np.array_equal(img, tofu[font.name])):
                        serif_codes[cp] = _blurred_codes(img[None])[0]
    if config.scripts is not None and set(config.scripts) - set(chosen):
        raise ValueError(
            f"GlyphConfig.scripts: {sorted(set(config.scripts) - set(chosen))} have fewer than "
            f"min_chars_per_script={config.min_chars_per_script} distinct letters or are in exclude_scripts; "
            f"eligible: {sorted(chosen)}."
        )
    chosen.sort()

    # 5. cross-script homoglyphs and the per-script cap (greedy, background first)
    members = [(s, cp) for s in chosen for cp in candidates[s]]
    owner = list(range(len(members))) + [i for i, (_, cp) in enumerate(members) if cp in serif_codes]
    rows = [codes[cp] for _, cp in members] + [serif_codes[cp] for _, cp in members if cp in serif_codes]
    linked: list[set[int]] = [set() for _ in members]
    for a, b in _similar_pairs(np.stack(rows), config.homoglyph_threshold):
        i, j = owner[a], owner[b]
        if members[i][0] != members[j][0]:
            linked[i].add(j)
            linked[j].add(i)
    neighbours = [sorted(lst) for lst in linked]
    too_small: list[str] = []
    while True:
        # Homoglyph removal takes from the evaluation side, so its small scripts can fall under min_chars_per_script
        # and leave: the split is redrawn over the remaining scripts until none leaves (keeps background_fraction).
        if len(chosen) < 2:
            raise ValueError(f"only {len(chosen)} eligible script(s) {chosen}: a background/evaluation split needs 2.")
        order = [chosen[i] for i in np.random.default_rng([config.seed, 0x5C42]).permutation(len(chosen))]
        num_background = min(max(round(config.background_fraction * len(order)), 1), len(order) - 1)
        split_of = {s: SPLITS[0] if k < num_background else SPLITS[1] for k, s in enumerate(order)}
        kept, blocked, small = _select_classes(members, neighbours, split_of, config)
        if not small:
            break
        too_small += small
        chosen = [s for s in chosen if s not in small]

    classes = [
        {
            "char": chr(cp),
            "codepoint": cp,
            "name": unicodedata.name(chr(cp), f"U+{cp:04X}"),
            "script": script,
            "split": split_of[script],
            "font": canonical_font[cp].name,
        }
        for script, cp in sorted(members[i] for i in kept)
    ]
    for split in SPLITS:
        if not any(c["split"] == split for c in classes):
            raise ValueError(
                f"the {split} split is empty once homoglyphs and scripts left with fewer than min_chars_per_script="
                f"{config.min_chars_per_script} letters ({too_small}) are removed: use more scripts or another "
                "background_fraction."
            )

    # 6. drawers
    canonical = np.stack([canon[c["codepoint"]] for c in classes])
    images, font_of_image = _render_drawers(classes, fonts, canonical_font, canonical, renderer, config, progress)
    used_names = sorted(set(font_of_image))
    font_ids = {name: k for k, name in enumerate(used_names)}
    style_of_font = {f.name: f.style for f in fonts}
    splits = [c["split"] for c in classes]
    info = {
        "num_scripts": len({c["script"] for c in classes}),
        "num_classes": len(classes),
        "num_images": len(images),
        "scripts": {split: sorted({c["script"] for c in classes if c["split"] == split}) for split in SPLITS},
        "classes_per_split": {split: splits.count(split) for split in SPLITS},
        "num_candidates": num_candidates,
        "dropped_empty_or_tofu": num_empty,
        "dropped_same_script_duplicates": num_duplicates,
        "dropped_homoglyphs": len(blocked),
        "homoglyphs": [
            f"{members[i][0]} {chr(members[i][1])} U+{members[i][1]:04X} ~ {members[j][0]} {chr(members[j][1])} "
            f"U+{members[j][1]:04X}"
            for i, j in sorted(blocked.items())
        ],
        "scripts_too_small_after_homoglyphs": too_small,
        "build_seconds": round(time.perf_counter() - t0, 1),
        "font_signature": signature,
        "config": config.to_dict(),
    }
    info = json.loads(json.dumps(info))  # tuples → lists: a built dataset equals the one read back from the cache
    return GlyphDataset(
        images=images,
        labels=np.repeat(np.arange(len(classes), dtype=np.int64), config.drawers_per_char),
        styles=np.array([style_of_font[name] for name in font_of_image], dtype=np.int64),
        fonts=np.array([font_ids[name] for name in font_of_image], dtype=np.int64),
        canonical=canonical,
        classes=classes,
        style_names=list(STYLE_NAMES),
        font_names=used_names,
        info=info,
    )


def _select_classes(
    members: list[tuple[str, int]], neighbours: list[list[int]], split_of: dict[str, str], config: GlyphConfig
) -> tuple[list[int], dict[int, int], list[str]]:
    """Greedy choice of the classes: letters are visited background first, then by code point (Latin A before Greek
    Α before Cyrillic А); a letter is kept unless its script is full (``max_chars_per_script``) or it looks like an
    already kept letter of *another* script, in which case it is blocked. So no two kept letters of different
    scripts are near-identical, in particular none across the split, and the background side of a homoglyph group
    is the one kept. Returns kept indices, {blocked: blocker} and the scripts left with fewer than
    ``min_chars_per_script`` letters (the caller removes them and chooses again: their letters then block no one)."""
    active = [i for i in range(len(members)) if members[i][0] in split_of]
    priority = sorted(active, key=lambda i: (split_of[members[i][0]] != SPLITS[0], members[i][1], i))
    is_kept = np.zeros(len(members), dtype=bool)
    count = dict.fromkeys(split_of, 0)
    blocked: dict[int, int] = {}
    for i in priority:
        script = members[i][0]
        if count[script] >= config.max_chars_per_script:
            continue
        blocker = next((j for j in neighbours[i] if is_kept[j]), None)
        if blocker is not None:
            blocked[i] = blocker
            continue
        is_kept[i] = True
        count[script] += 1
    small = sorted(s for s in split_of if count[s] < config.min_chars_per_script)
    return np.flatnonzero(is_kept).tolist(), blocked, small


def _render_drawers(classes, fonts, canonical_font, canonical, renderer, config, progress):
    """All drawer images in class order, and each image's font file name. A class's randomness comes from its own
    generator seeded by (seed, code point), so a letter's images do not depend on which other letters are in the
    dataset; fonts are taken family by family in a shuffled cycle (NotoSans has 80 files, most families 9), a
    weight/width at random within the family."""
    from tqdm.auto import tqdm

    n, size = config.drawers_per_char, config.image_size
    wanted = {c["codepoint"] for c in classes}
    families: dict[int, dict[str, list[_Font]]] = {cp: {} for cp in wanted}
    for font in fonts:
        for cp in font.letters & wanted:
            families[cp].setdefault(font.family, []).append(font)
    max_stroke = int(round(config.stroke_px * 2))  # in working (2×) pixels
    coarse = max(4, size // 2)
    total = len(classes) * n
    noise = np.empty((total, 2, coarse, coarse), dtype=np.float32)
    theta, scale, shear = np.empty(total), np.empty(total), np.empty(total)
    shift, stroke = np.empty((total, 2)), np.zeros(total, dtype=np.int64)
    chosen: list[_Font] = []
    for k, cls in enumerate(classes):
        cp, rows = cls["codepoint"], slice(k * n, (k + 1) * n)
        rng = np.random.default_rng([config.seed, cp, 0x9E37])
        names = sorted(families[cp])
        family_order = rng.permutation(len(names))
        picks = rng.random(n)
        for d in range(n):
            choices = families[cp][names[family_order[d % len(names)]]]
            chosen.append(choices[int(picks[d] * len(choices))])
        theta[rows] = np.radians(rng.uniform(-config.rotation_deg, config.rotation_deg, n))
        scale[rows] = rng.uniform(*config.scale_range, n)
        shear[rows] = np.radians(rng.uniform(-config.shear_deg, config.shear_deg, n))
        shift[rows] = rng.uniform(-config.translate_px, config.translate_px, (n, 2))
        stroke[rows] = rng.integers(-max_stroke, max_stroke + 1, n)
        noise[rows] = rng.standard_normal((n, 2, coarse, coarse), dtype=np.float32)

    work = 2 * size
    hires = np.zeros((total, work, work), dtype=np.float32)
    font_of_image = [""] * total
    for row in tqdm(
        sorted(range(total), key=lambda r: (chosen[r].name, r)),  # one font loaded at a time
        desc="render glyphs", unit="img", disable=not progress, mininterval=2.0,
    ):  # fmt: skip
        cp = classes[row // n]["codepoint"]
        renderer.use(chosen[row].name)
        src = renderer.source(cp)
        if src is None:  # this font maps the letter to an empty glyph: the canonical font draws it instead
            font_of_image[row] = canonical_font[cp].name
            continue
        hires[row] = renderer.place(src, theta[row], scale[row], shear[row], shift[row])
        font_of_image[row] = chosen[row].name
    for row in range(total):
        cp = classes[row // n]["codepoint"]
        if font_of_image[row] != chosen[row].name:
            renderer.use(font_of_image[row])
            hires[row] = renderer.place(renderer.source(cp), theta[row], scale[row], shear[row], shift[row])

    images = np.empty((total, size, size), dtype=np.uint8)
    batch = 512
    for start in range(0, total, batch):
        rows = slice(start, start + batch)
        block = _stroke(hires[rows], stroke[rows])
        if config.elastic_alpha > 0:
            block = _elastic(block, noise[rows], config.elastic_alpha, config.elastic_sigma)
        images[rows] = _finish(block)
    # An augmentation that pushed most of the glyph off the canvas: the clean render stands in.
    ink = images.reshape(total, -1).sum(axis=1, dtype=np.int64)
    clean_ink = canonical.reshape(len(canonical), -1).sum(axis=1, dtype=np.int64)
    for row in np.flatnonzero(ink < 0.3 * np.repeat(clean_ink, n)):
        images[row] = canonical[row // n]
    return images, font_of_image


# ------------------------------------------------------------------------------------------------------ cache
def glyph_cache_path(config: GlyphConfig) -> Path:
    """Where ``load_glyphs`` keeps this config's dataset (depends on the installed fonts and renderer versions)."""
    key = stable_hash(
        {"config": config.to_dict(), "fonts": _font_signature(config.font_dir), "format": FORMAT_VERSION}
    )
    return cache_root() / "glyphs" / f"{key}.npz"


def _save(dataset: GlyphDataset, path: Path) -> None:
    meta = {
        "classes": dataset.classes,
        "style_names": dataset.style_names,
        "font_names": dataset.font_names,
        "info": dataset.info,
    }

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(
                f,
                images=dataset.images,
                labels=dataset.labels,
                styles=dataset.styles,
                fonts=dataset.fonts,
                canonical=dataset.canonical,
                meta=np.array(json.dumps(meta, ensure_ascii=False)),
            )

    atomic_write(path, write)


def _load(path: Path) -> GlyphDataset:
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {key: data[key] for key in ("images", "labels", "styles", "fonts", "canonical")}
        dataset = GlyphDataset(
            **arrays,
            classes=meta["classes"],
            style_names=meta["style_names"],
            font_names=meta["font_names"],
            info=meta["info"],
        )
        n = len(dataset.images)
        if not len(dataset.labels) == len(dataset.styles) == len(dataset.fonts) == n or len(dataset.canonical) != len(
            dataset.classes
        ):
            raise ValueError("array lengths disagree")
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
        raise GlyphCacheError(
            f"the glyph cache file {path} is corrupt or unreadable ({type(err).__name__}: {err}); "
            "delete it to rebuild."
        ) from err
    return dataset


def load_glyphs(config: GlyphConfig | None = None, progress: bool = False) -> GlyphDataset:
    """The dataset for ``config``: read from the cache when built before, else built (~1–2 min for the default
    config on one core) and cached atomically. A corrupt cache file raises :class:`GlyphCacheError` naming it."""
    config = config or GlyphConfig()
    path = glyph_cache_path(config)
    if path.exists():
        return _load(path)
    dataset = build_glyphs(config, progress=progress)
    _save(dataset, path)
    if progress:
        logger.info("glyphs: %d classes, %d images → %s", len(dataset.classes), len(dataset.images), path)
    return dataset
