"""What a stored pixel value means: the bands' data type, scale and offset.

GDAL lets a band declare that its stored values stand for ``stored * scale + offset``
(Sentinel-2 L2A since processing baseline 04.00: reflectance x 10000 + 1000, declared as
scale 0.0001 and offset -0.1; products resampled to Float32 reflectance declare none).
geoseg reads the stored values and normalises them with the training chips' statistics,
as the model saw them. Two scenes whose stored values mean different things therefore
cannot share one tile run (one set of statistics), and a scene cannot be predicted by a
model trained on another encoding: either would give a wrong result without a word. This
module says when, in one line that names the files and the conversion.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from geoseg.errors import InputRasterError

if TYPE_CHECKING:  # both import this module
    from geoseg.bands import BandStats
    from geoseg.io.rasters import SceneInfo

log = logging.getLogger(__name__)

#: Per data band ``(scale, offset)``; empty when every band stores its values as they are.
Scaling = tuple[tuple[float, float], ...]

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


def _groups(scenes: Sequence[SceneInfo], key: Any, say: Any) -> str:
    by: dict[Any, list[str]] = {}
    for s in scenes:
        by.setdefault(key(s), []).append(s.source)
    parts = []
    for k, names in by.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        parts.append(f"{shown}: {say(k)}")
    return "; ".join(parts)


def one_encoding(scenes: Sequence[SceneInfo]) -> None:
    """Refuse scenes of one tile run whose stored values mean different things.

    Raises:
        InputRasterError: data types or declared scales/offsets that differ, naming the
            scenes of each and what to do.
    """
    if len({s.dtype for s in scenes}) > 1:
        raise InputRasterError(
            f"scenes are of different data types ({_groups(scenes, lambda s: s.dtype, str)}): one set of "
            "band statistics cannot normalise both ranges; tile them into separate folders, or convert "
            "them to one type and range first (gdal_translate -ot TYPE -scale SRC_MIN SRC_MAX DST_MIN DST_MAX)")
    if len({s.scaling for s in scenes}) > 1:
        raise InputRasterError(
            f"scenes declare different band scales/offsets ({_groups(scenes, lambda s: s.scaling, describe)}): "
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

    Another data type warns (a Float32 copy of byte imagery is common and harmless); other
    declared scales/offsets are refused. Unrecorded (models of earlier versions): not compared.

    Raises:
        InputRasterError: a scene whose declared scale/offset differ from the training chips'.
    """
    trained, dtype = stats.scaling, stats.dtype
    for s, bands in reads:
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
