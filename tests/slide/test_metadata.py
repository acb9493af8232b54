"""MPP and objective power come from the slide's own metadata, in a fixed order."""

from __future__ import annotations

import pytest

from tupac.slide.metadata import mpp_from_properties, objective_from_properties

DESC = "Aperio Image Library v10.0.51\r\n46920x33014 (256x256) JPEG/RGB Q=30|AppMag = 40|MPP = 0.2520|Left = 1"


@pytest.mark.parametrize(
    "props,mpp",
    [
        ({"openslide.mpp-x": "0.499", "aperio.MPP": "0.5"}, 0.499),
        ({"aperio.MPP": "0.2520"}, 0.2520),
        ({"tiff.ImageDescription": DESC}, 0.2520),
        ({"tiff.XResolution": "40000", "tiff.ResolutionUnit": "centimeter"}, 0.25),
        ({"tiff.XResolution": "101600", "tiff.ResolutionUnit": "inch"}, 0.25),
        ({"tiff.XResolution": "1.0", "tiff.ResolutionUnit": ""}, None),  # cuCIM's unitless SVS spacing
        ({"tiff.XResolution": "72", "tiff.ResolutionUnit": "none"}, None),
        ({"openslide.mpp-x": "0", "aperio.MPP": "nan"}, None),
        ({"tiff.ImageDescription": "Aperio Image Library v11.0.37\r\n4443x3567 (256x256) J2K/KDU Q=70"}, None),
    ],
)
def test_mpp_sources(props, mpp):
    assert mpp_from_properties(props) == (pytest.approx(mpp) if mpp else None)


def test_objective_power():
    assert objective_from_properties({"openslide.objective-power": "20"}) == 20
    assert objective_from_properties({"aperio.AppMag": "40"}) == 40
    assert objective_from_properties({"tiff.ImageDescription": DESC}) == 40
    assert objective_from_properties({}) is None
