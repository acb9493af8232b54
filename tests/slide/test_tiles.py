"""The tile byte checks that stand in for cuCIM's missing decode errors."""

from __future__ import annotations

import tifffile

from tupac.slide.tiles import j2k_problem, jpeg_header_problem


def tile_bytes(path, page=0, index=0) -> bytes:
    p = tifffile.TiffFile(path).pages[page]
    with open(path, "rb") as fh:
        fh.seek(p.dataoffsets[index])
        return fh.read(p.databytecounts[index])


def test_every_tile_of_the_good_slides_passes(real_dir):
    for name, page in (("cmu-1-small-region.svs", 0), ("tcga-cr-7395-01a-01-ts1.svs", 0)):
        p = tifffile.TiffFile(real_dir / name).pages[page]
        check = jpeg_header_problem if p.compression == 7 else j2k_problem
        for i in range(len(p.dataoffsets)):
            assert check(tile_bytes(real_dir / name, page, i)) is None


def test_the_unreadable_fixture_tile_fails(real_dir):
    problem = jpeg_header_problem(tile_bytes(real_dir / "unreadable.svs"))
    assert problem is not None and "quantization" in problem


def test_structural_damage_is_named():
    good = bytes.fromhex("ffd8 ffc0 0011 08 0040 0040 03 011100 021100 031100 ffda 000c 03 0100 0200 0300 003f00")
    assert jpeg_header_problem(good) is None
    assert jpeg_header_problem(b"\x00" * 32) == "no JPEG start-of-image marker"
    assert "bogus JPEG marker length" in jpeg_header_problem(b"\xff\xd8\xff\xe0\x00\x01")
    assert "frame header" in jpeg_header_problem(bytes.fromhex("ffd8 ffc0 0008 08 0040 0040 03"))
    assert jpeg_header_problem(good[:12]) == "short"
    assert "Huffman" in jpeg_header_problem(bytes.fromhex("ffd8 ffc4 0014 00") + bytes([0, 200] + [0] * 15))
    assert j2k_problem(b"\xff\x4f\xff\x51\x00") is None and j2k_problem(b"\xff\xd8") is not None
