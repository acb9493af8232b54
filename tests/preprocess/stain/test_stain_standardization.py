"""Standardization does its job on Beer-Lambert phantoms from three 'centers': colors converge,
structure survives, one slide gets one transform, and odd tiles stay finite."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from conftest import FakeReader, Mask, phantom
from skimage.color import deltaE_ciede2000, rgb2hed, rgb2lab

from tupac.errors import StainError
from tupac.preprocess import stain
from tupac.preprocess.stain import StainReference, wsics


def _center_distance(images: dict, truths: dict, region: str = "tissue") -> float:
    """Mean pairwise CIEDE2000 between the centers' mean LAB color over ``region`` pixels."""
    means = []
    for c in sorted(images):
        px = np.concatenate([rgb2lab(im)[getattr(t, region)] for im, t in zip(images[c], truths[c])])
        means.append(px.mean(axis=0))
    return float(np.mean([deltaE_ciede2000(a, b) for a, b in itertools.combinations(means, 2)]))


@pytest.mark.parametrize("method,min_reduction", [("wsics", 0.70), ("macenko", 0.50), ("reinhard", 0.50)])
def test_centers_converge(centers_tiles, method, min_reduction):
    tiles, template = centers_tiles
    ref = stain.fit(template.rgb, method=method)
    before = {c: [t.rgb for t in ts] for c, ts in tiles.items()}
    after = {}
    for c, ts in tiles.items():
        stats = stain.get_method(method)._stats([t.rgb for t in ts], 0, c)  # one center = one "slide"
        after[c] = [stain.transform(t.rgb, stats, ref) for t in ts]
    d0, d1 = _center_distance(before, tiles), _center_distance(after, tiles)
    assert d0 > 5.0  # the centers really differ
    assert d1 <= (1 - min_reduction) * d0, f"{method}: {d0:.2f} -> {d1:.2f}"


@pytest.mark.parametrize("method", ["wsics", "macenko"])
def test_hematoxylin_structure_is_preserved(centers_tiles, method):
    tiles, template = centers_tiles
    ref = stain.fit(template.rgb, method=method)
    for c, ts in tiles.items():
        for t in ts:
            out = stain.transform(t.rgb, stain.fit_image(t.rgb, method=method), ref)
            r = np.corrcoef(rgb2hed(t.rgb)[..., 0].ravel(), rgb2hed(out)[..., 0].ravel())[0, 1]
            assert r >= 0.9, f"{method} center {c}: H-channel correlation {r:.3f}"


def test_wsics_classes_follow_the_phantom_truth(centers_tiles):
    tiles, _ = centers_tiles
    for c, ts in tiles.items():
        stats = wsics.fit_image(ts[0].rgb)
        cls = wsics.classify(ts[0].rgb, stats.params).argmax(axis=-1)
        t = ts[0]
        assert (cls[t.nuclei] == wsics.H).mean() > 0.8, c
        assert (cls[t.tissue & ~t.nuclei] == wsics.E).mean() > 0.8, c
        assert (cls[~t.tissue] == wsics.B).mean() > 0.8, c


def test_wsics_template_onto_itself_is_near_identity(centers_tiles):
    _, template = centers_tiles
    ref = wsics.fit(template.rgb)
    out = wsics.transform(template.rgb, ref.stats, ref)
    assert np.abs(out.astype(int) - template.rgb).mean() < 2.0


@pytest.fixture(scope="module")
def fake_slide():
    """A 1024 x 1024 px 'slide' at 0.5 um/px: tissue phantom of center B, with a tissue mask."""
    p = phantom("B", seed=3, shape=(1024, 1024), nucleus_r=8.0)
    return FakeReader(p.rgb, mpp=0.5), Mask(p.tissue[::16, ::16].copy(), 8.0), p


@pytest.mark.parametrize("method", ["wsics", "macenko", "reinhard"])
def test_one_slide_one_transform_overlapping_tiles_agree(fake_slide, centers_tiles, method):
    reader, mask, _ = fake_slide
    ref = stain.fit(centers_tiles[1].rgb, method=method)
    stats = stain.fit_slide(reader, mask, method=method, mpp=1.0, tile_px=128, max_tiles=8, seed=0)
    assert stats.n_tiles == 8 and not stats.degenerate
    # tiles at 1 um/px, the second shifted by 50 px: their overlap must be identical
    a = stain.transform(reader.read_region_mpp((100, 200), (256, 256), 1.0), stats, ref)
    b = stain.transform(reader.read_region_mpp((200, 300), (256, 256), 1.0), stats, ref)
    np.testing.assert_array_equal(a[50:, 50:], b[:-50, :-50])


def test_fit_slide_samples_tissue_across_the_slide_deterministically(fake_slide):
    reader, mask, p = fake_slide
    reader.reads.clear()
    s1 = stain.fit_slide(reader, mask, method="macenko", mpp=1.0, tile_px=128, max_tiles=6, seed=4)
    origins = np.array([r[0] for r in reader.reads])
    assert len(origins) == 6 and all(r[2] == 1.0 for r in reader.reads)
    # tiles are in tissue, and spread: not all in one quarter of the slide
    for x, y in origins:
        assert p.tissue[y : y + 256, x : x + 256].mean() >= 0.4
    assert np.ptp(origins[:, 0]) > 256 or np.ptp(origins[:, 1]) > 256
    s2 = stain.fit_slide(reader, mask, method="macenko", mpp=1.0, tile_px=128, max_tiles=6, seed=4)
    assert s1.key == s2.key


def test_fit_slide_on_a_region_draws_its_tiles_there(fake_slide):
    # The mitosis stage measures a slide's statistics on its tumor only: tiles come from the
    # region (here the left half of the tissue), glass still from the whole tissue mask.
    reader, mask, p = fake_slide
    left = Mask(mask.mask.copy(), 8.0)
    left.mask[:, 32:] = False  # mask px 32 = level-0 x 512
    reader.reads.clear()
    region_stats = stain.fit_slide(reader, mask, region=left, method="wsics", mpp=1.0, tile_px=128, max_tiles=6, seed=4)
    origins = np.array([r[0] for r in reader.reads])
    assert len(origins) == region_stats.n_tiles > 0
    assert origins[:, 0].max() + 256 <= 512
    whole = stain.fit_slide(reader, mask, method="wsics", mpp=1.0, tile_px=128, max_tiles=6, seed=4)
    assert whole.key != region_stats.key


def test_empty_tissue_mask_is_an_error(fake_slide):
    reader, mask, _ = fake_slide
    with pytest.raises(StainError, match="tissue mask is empty"):
        stain.fit_slide(reader, Mask(np.zeros_like(mask.mask), 8.0), method="wsics")


def test_lookup_table_and_direct_paths_agree(centers_tiles):
    tiles, template = centers_tiles
    ref = stain.fit(template.rgb, method="macenko")
    stats = stain.fit_image(tiles["A"][0].rgb, method="macenko")
    direct = stain.transform(tiles["A"][0].rgb, stats, ref)
    lut = stain.lookup_table(stats, ref)
    np.testing.assert_array_equal(stain.apply_lut(lut, tiles["A"][0].rgb), direct)
    np.testing.assert_array_equal(stain.transform(tiles["A"][0].rgb, stats, ref), direct)  # now via the table


def _odd_tiles():
    rng = np.random.default_rng(0)
    white = np.clip(rng.normal(246, 3, (64, 64, 3)), 0, 255).astype(np.uint8)
    eosin_only = phantom("A", seed=1, shape=(64, 64))  # then strip the nuclei by recoloring them
    eo = eosin_only.rgb.copy()
    eo[eosin_only.nuclei] = eo[eosin_only.tissue & ~eosin_only.nuclei].mean(0).astype(np.uint8)
    saturated = rng.choice(np.array([0, 255], np.uint8), size=(64, 64, 3))
    return {"near-white": white, "no nuclei": eo, "saturated": saturated, "black": np.zeros((8, 8, 3), np.uint8)}


@pytest.mark.parametrize("method", ["wsics", "macenko", "reinhard"])
@pytest.mark.parametrize("kind", ["near-white", "no nuclei", "saturated", "black"])
def test_odd_tiles_give_finite_results(centers_tiles, method, kind):
    tiles, template = centers_tiles
    tile = _odd_tiles()[kind]
    ref = stain.fit(template.rgb, method=method)
    with warnings.catch_warnings(), np.errstate(divide="raise", invalid="raise", over="raise"):
        warnings.simplefilter("error")
        # the tile standardized with a normal slide's statistics ...
        stats = stain.fit_image(tiles["B"][0].rgb, method=method)
        out = stain.transform(tile, stats, ref)
        # ... and with statistics fitted on the odd tile itself
        own = stain.fit_image(tile, method=method)
        out_own = stain.transform(tile, own, ref)
    for o in (out, out_own):
        assert o.shape == tile.shape and o.dtype == np.uint8
    for v in own.params.values():
        assert np.isfinite(v).all()
    if own.degenerate:  # too little tissue to fit: left as it is
        np.testing.assert_array_equal(out_own, tile)


@pytest.mark.slow
def test_wsics_every_8bit_color_is_finite(centers_tiles):
    """Tabulating the transform evaluates it on all 2**24 colors: no warning may fire."""
    tiles, template = centers_tiles
    ref = wsics.fit(template.rgb)
    stats = wsics.fit_image(tiles["C"][0].rgb)
    with warnings.catch_warnings(), np.errstate(divide="raise", invalid="raise", over="raise"):
        warnings.simplefilter("error")
        lut = stain.build_lut(lambda px: wsics.transform_pixels(px, stats.params, ref.params))
    assert lut.shape == (1 << 24,)
    # white glass stays (almost) white
    white = stain.apply_lut(lut, np.full((1, 1, 3), 255, np.uint8))
    assert white.min() >= 250


def test_reference_json_round_trip(tmp_path, centers_tiles):
    tiles, template = centers_tiles
    for method in stain.METHODS:
        ref = stain.fit(template.rgb, method=method)
        path = ref.save(tmp_path / f"{method}.json")
        back = StainReference.load(path)
        assert back.method == method and back.key == ref.key
        stats = stain.fit_image(tiles["A"][0].rgb, method=method)
        np.testing.assert_array_equal(stain.transform(tiles["A"][0].rgb, stats, back), stain.transform(tiles["A"][0].rgb, stats, ref))


def test_bad_references_are_clear_errors(tmp_path, centers_tiles):
    tiles, template = centers_tiles
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(StainError, match="bad.json"):
        StainReference.load(bad)
    bad.write_text('{"format": "tupac-stain-reference", "version": 1, "method": "macenko", "params": {"stain_matrix": [1, 2]}}')
    with pytest.raises(StainError, match="stain_matrix"):
        StainReference.load(bad)
    with pytest.raises(FileNotFoundError):
        StainReference.load(tmp_path / "missing.json")
    with pytest.raises(StainError, match="unknown stain method"):
        stain.get_method("vahadane")
    ref = stain.fit(template.rgb, method="macenko")
    with pytest.raises(StainError, match="reinhard"):
        stain.transform(template.rgb, stain.fit_image(template.rgb, method="reinhard"), ref)
    white = np.full((32, 32, 3), 250, np.uint8)
    with pytest.raises(StainError, match="too little tissue"):
        stain.fit(white, method="wsics")
