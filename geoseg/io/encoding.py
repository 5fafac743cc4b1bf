"""What a stored pixel value means: the bands' data type, scale and offset, and their order.

GDAL lets a band declare that its stored values stand for ``stored * scale + offset``
(Sentinel-2 L2A since processing baseline 04.00: reflectance x 10000 + 1000, declared as
scale 0.0001 and offset -0.1; products resampled to Float32 reflectance declare none).
geoseg reads the stored values and normalises them with the training chips' statistics,
as the model saw them. Two scenes whose stored values mean different things therefore
cannot share one tile run (one set of statistics), and a scene cannot be predicted by a
model trained on another encoding: either would give a wrong result without a word. This
module says when, in one line that names the files and the conversion.

The same holds for the order of the bands where the files declare it (colour
interpretation red/green/blue..., or band descriptions such as ``B04``): a scene of blue,
green, red bands read by a model of red, green, blue ones gives wrong polygons with exit 0.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from geoseg.errors import InputRasterError, listed

if TYPE_CHECKING:  # both import this module
    from geoseg.bands import BandStats
    from geoseg.io.rasters import SceneInfo

log = logging.getLogger(__name__)

#: Per data band ``(scale, offset)``; empty when every band stores its values as they are.
Scaling = tuple[tuple[float, float], ...]

#: Colour interpretations that say nothing of what a band holds (GDAL's defaults).
_SILENT = frozenset({"undefined", "gray", "grey", "alpha", "palette"})
#: Descriptions that only number the band.
_NUMBERED = re.compile(r"(band)?[\s_]*\d+", re.IGNORECASE)

_RELABEL = "gdal_edit.py -colorinterp_1 red ..., or the band descriptions"

_UNSCALE = "gdal_translate -unscale -ot Float32 IN OUT stores the values the declarations stand for"


def band_scaling(scales: Iterable[float | None], offsets: Iterable[float | None],
                 bands: Sequence[int]) -> Scaling:
    """The ``(scale, offset)`` of the 1-based ``bands``: ``()`` when all are (1, 0).

    Examples:
        >>> band_scaling((1.0, 1.0), (0.0, 0.0), [1, 2])
        ()
        >>> band_scaling((0.0001, 0.0001, 1.0), (-0.1, -0.1, 0.0), [1, 2])
        ((0.0001, -0.1), (0.0001, -0.1))
    """
    pairs = tuple((1.0 if s is None else float(s), 0.0 if o is None else float(o))
                  for s, o in zip(scales, offsets, strict=True))
    return selected(pairs, bands)


def band_meaning(colorinterp: Iterable[Any], descriptions: Iterable[str | None], count: int) -> tuple[str, ...]:
    """What each of the first ``count`` bands declares it holds; ``""`` where it says nothing.

    A band's colour interpretation when it names one (red, green, blue; GDAL 3.10's nir,
    swir...), else its description (``B04``) unless that only numbers it, lower-cased.

    Examples:
        >>> from rasterio.enums import ColorInterp as C
        >>> band_meaning([C.blue, C.green, C.red], [None] * 3, 3)
        ('blue', 'green', 'red')
        >>> band_meaning([C.gray, C.undefined, C.undefined], ["B04", "Band 2", None], 3)
        ('b04', '', '')
    """
    out = []
    for ci, desc in zip(list(colorinterp)[:count], list(descriptions)[:count], strict=True):
        name = str(getattr(ci, "name", ci)).lower()
        text = (desc or "").strip()
        out.append(name if name not in _SILENT else "" if _NUMBERED.fullmatch(text) else text.lower())
    return tuple(out)


def bands_for(declared: Sequence[str], wanted: Sequence[str]) -> tuple[int, ...] | None:
    """The 1-based bands of a file declaring ``declared`` that hold ``wanted``, in its order.

    None unless both declare every band, without repeats, and ``declared`` holds all of ``wanted``.

    Examples:
        >>> bands_for(("blue", "green", "red", "nir"), ("red", "green", "blue"))
        (3, 2, 1)
        >>> bands_for(("red", "", "blue"), ("red", "green", "blue")) is None
        True
    """
    if not wanted or not all(wanted) or not all(declared) or len(set(wanted)) < len(wanted) \
            or len(set(declared)) < len(declared) or not set(wanted) <= set(declared):
        return None
    return tuple(list(declared).index(m) + 1 for m in wanted)


def reordered(declared: Sequence[str], wanted: Sequence[str]) -> tuple[int, ...] | None:
    """The bands (1-based) that put ``declared`` in ``wanted``'s order; None if nothing to reorder.

    Only when both declare the same bands, each once, in different orders.

    Examples:
        >>> reordered(("blue", "green", "red"), ("red", "green", "blue"))
        (3, 2, 1)
        >>> reordered(("red", "green", "blue"), ("red", "green", "blue")) is None
        True
    """
    order = bands_for(declared, wanted) if len(declared) == len(wanted) else None
    return None if order is None or order == tuple(range(1, len(order) + 1)) else order


def declared_order(scenes: Sequence[SceneInfo]) -> SceneInfo:
    """The first scene that declares what every band holds (else the first): the run's band order."""
    return next((s for s in scenes if s.meaning and all(s.meaning)), scenes[0])


def catalogued(declared: Scaling | None, bands: int) -> Scaling:
    """A catalogue's declaration (a STAC asset's) for a file of ``bands`` data bands.

    One pair stands for every band; another count than the file's is not this file's: ().

    Examples:
        >>> catalogued(((0.0001, -0.1),), 2)
        ((0.0001, -0.1), (0.0001, -0.1))
        >>> catalogued(((1.0, 0.0),), 3), catalogued(None, 3)
        ((), ())
    """
    if not declared or len(declared) not in (1, bands):
        return ()
    return selected(declared * bands if len(declared) == 1 else declared, range(1, bands + 1))


def recorded_scaling(stats: Mapping[str, Any]) -> Scaling | None:
    """The scaling a ``stats.json`` (or a checkpoint's stats) records; None when unrecorded."""
    raw = stats.get("scaling")
    if raw is None:
        return None
    return tuple((float(s), float(o)) for s, o in raw)


def recorded_meaning(stats: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The band meanings a ``stats.json`` (or a checkpoint's stats) records; None when unrecorded."""
    raw = stats.get("meaning")
    return None if not isinstance(raw, list) else tuple(str(m) for m in raw)


def describe(scaling: Scaling) -> str:
    """``scaling`` in words.

    Examples:
        >>> describe(())
        'no scale or offset'
        >>> describe(((0.0001, -0.1), (0.0001, -0.1)))
        'scale 0.0001 and offset -0.1'
        >>> describe(((2.0, 0.0), (1.0, 0.0)))
        'scales 2, 1 and offsets 0, 0'
    """
    if not scaling:
        return "no scale or offset"
    if len(set(scaling)) == 1:
        return f"scale {scaling[0][0]:g} and offset {scaling[0][1]:g}"
    return (f"scales {', '.join(f'{s:g}' for s, _ in scaling)} and offsets "
            f"{', '.join(f'{o:g}' for _, o in scaling)}")


def grouped(scenes: Sequence[SceneInfo], key: Any, say: Any) -> str:
    """The scenes grouped by ``key``, each group as ``'a.tif, b.tif: say(key)'``, groups joined by '; '."""
    by: dict[Any, list[str]] = {}
    for s in scenes:
        by.setdefault(key(s), []).append(s.source)
    parts = []
    for k, names in by.items():
        parts.append(f"{listed(names, 3)}: {say(k)}")
    return "; ".join(parts)


def one_encoding(scenes: Sequence[SceneInfo]) -> None:
    """Refuse scenes of one tile run whose stored values mean different things.

    Raises:
        InputRasterError: data types or declared scales/offsets that differ, naming the
            scenes of each and what to do.
    """
    if len({s.dtype for s in scenes}) > 1:
        raise InputRasterError(
            f"scenes are of different data types ({grouped(scenes, lambda s: s.dtype, str)}): one set of "
            "band statistics cannot normalise both ranges; tile them into separate folders, or convert "
            "them to one type and range first (gdal_translate -ot TYPE -scale SRC_MIN SRC_MAX DST_MIN DST_MAX)")
    first = declared_order(scenes)
    for s in scenes:
        order = reordered(s.meaning, first.meaning)
        if order is not None:
            raise InputRasterError(
                f"{s.source} declares its bands as {', '.join(s.meaning)} but {first.source} as "
                f"{', '.join(first.meaning)}: the same bands in another order, which one set of statistics and one "
                f"model cannot serve; reorder it first (gdal_translate {' '.join(f'-b {b}' for b in order)} "
                f"{s.source} {s.name}_reordered.tif), or, if it mislabels its bands, correct them ({_RELABEL})")
    if len({s.scaling for s in scenes}) > 1:
        raise InputRasterError(
            f"scenes declare different band scales/offsets ({grouped(scenes, lambda s: s.scaling, describe)}): "
            "the same stored value means another quantity in each; tile them into separate folders, or "
            f"bring them to one encoding first ({_UNSCALE})")


def selected(scaling: Scaling, bands: Sequence[int]) -> Scaling:
    """The declaration of the 1-based ``bands`` read (``--bands``) of a scene's ``scaling``.

    Examples:
        >>> selected(((1.0, 0.0), (1.0, 0.0), (1.0, 0.0), (0.5, 0.0)), [1, 2, 3]), selected((), [2])
        ((), ())
        >>> selected(((1.0, 0.0), (0.5, 0.0)), [2, 1])
        ((0.5, 0.0), (1.0, 0.0))
    """
    if not scaling:
        return ()
    chosen = tuple(scaling[b - 1] for b in bands)
    return () if all(p == (1.0, 0.0) for p in chosen) else chosen


def check_for_model(reads: Sequence[tuple[SceneInfo, Sequence[int]]], stats: BandStats) -> None:
    """Check the bands read of each scene (``(scene, bands)``) against the training chips' encoding.

    Bands the scene declares in another order than the training scenes did are refused,
    with the ``--bands`` that reads them in the training order. Another data type warns (a
    Float32 copy of byte imagery is common and harmless); other declared scales/offsets are
    refused. Unrecorded (models of earlier versions): not compared.

    Raises:
        InputRasterError: a scene whose declared scale/offset differ from the training chips', or
            whose bands read are the training bands in another order.
    """
    trained, dtype, meant = stats.scaling, stats.dtype, stats.meaning or ()
    for s, bands in reads:
        read = tuple(s.meaning[b - 1] for b in bands) if s.meaning else ()
        order = bands_for(s.meaning, meant) if sorted(read) == sorted(meant) else None  # the same bands, reordered
        if order is not None and order != tuple(bands):
            raise InputRasterError(
                f"{s.source} declares the bands read as {', '.join(s.meaning[b - 1] for b in bands)} but the model "
                f"was trained on {', '.join(meant)} (as their scenes declared them): read them in the "
                f"training order with --bands {','.join(map(str, order))} (if it mislabels its bands, correct "
                f"them instead: {_RELABEL})")
        declared = selected(s.scaling, bands)
        if trained is not None and declared != trained:
            if len(set(trained)) > 1:
                same = "gdal_edit.py -scale and -offset of each band"
            else:
                scale, offset = trained[0] if trained else (1.0, 0.0)
                same = f"gdal_edit.py -scale {scale:g} -offset {offset:g} {s.source}"
            raise InputRasterError(
                f"{s.source} declares {describe(declared)} for the bands read but the model was trained on "
                f"chips of {describe(trained)}: its stored values mean another quantity; bring it to the "
                f"training scenes' encoding (or retrain on scenes like it), or, if its values already mean "
                f"what theirs did, make the declarations match ({same})")
        if dtype and s.dtype != dtype:
            mean, std = [round(v, 1) for v in stats.mean], [round(v, 1) for v in stats.std]
            log.warning("%s is %s but the model was trained on %s chips; its values are normalised "
                        "with the training statistics (mean %s, std %s): rescale the scene to the "
                        "training range (gdal_translate -scale -ot %s) if results look wrong",
                        s.source, s.dtype, dtype, mean, std, dtype)
