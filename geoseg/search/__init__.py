"""Search by example: find objects like a few examples in scenes (``geoseg search``).

The model is :class:`geoseg.models.refdet.RefDet`; training on ``geoseg tile`` output is
:func:`geoseg.search.train.train_search` (``geoseg train`` with a ``task: search`` config);
inference over scenes is :func:`geoseg.search.stage.search`.
"""

from geoseg.search.stage import SearchConfig, SearchSummary, search

__all__ = ["SearchConfig", "SearchSummary", "search"]
