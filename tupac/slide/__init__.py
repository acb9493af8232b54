"""Reading whole-slide images: one ``SlideReader`` protocol, OpenSlide and cuCIM backends.

>>> from tupac.slide import open_slide
>>> with open_slide("slide.svs") as s:                       # doctest: +SKIP
...     tile = s.read_region_mpp((1000, 2000), (512, 512), mpp=0.5)
...     thumb = s.thumbnail(mpp=8.0)
"""

from tupac.slide.base import BaseSlideReader, SlideReader
from tupac.slide.cucim_backend import CuCIMReader
from tupac.slide.factory import BACKENDS, choose_backend, open_slide
from tupac.slide.metadata import SlideInfo
from tupac.slide.openslide_backend import OpenSlideReader
from tupac.slide.probe import ProbeVerdict, probe_cucim
from tupac.slide.resample import MPP_TOLERANCE

__all__ = [
    "BACKENDS",
    "MPP_TOLERANCE",
    "BaseSlideReader",
    "CuCIMReader",
    "OpenSlideReader",
    "ProbeVerdict",
    "SlideInfo",
    "SlideReader",
    "choose_backend",
    "open_slide",
    "probe_cucim",
]
