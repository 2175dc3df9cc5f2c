"""data.py: one parser for every dataset naming (clear errors for bad namings), own-data labels
(camera-less, ids from folders, ids that are names), images of every mode read as 8-bit RGB, the
identity-balanced sampler."""

import re
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from data import (
    IMAGENET_MEAN,
    NAMINGS,
    PKSampler,
    id_text,
    image_labels,
    load_image,
    match_name,
    naming_pattern,
    number_ids,
    own_camera,
    parse_name,
    read_ids,
    read_naming,
)
from utils import UserError, save_yaml

VERI = r"^(?P<pid>\d+)_c(?P<cam>\d+)_"
CUSTOM = r"^p(?P<pid>\d+)_cam(?P<cam>\d+)_"


@pytest.mark.parametrize(
    "filename, naming, expected",
    [
        # Market-1501, with its junk (-1) and distractor (0000) ids.
        ("0002_c1s1_000451_03.jpg", "market", (2, 1)),
        ("1501_c6s4_001877_02.jpg", "market", (1501, 6)),
        ("-1_c3s2_064478_05.jpg", "market", (-1, 3)),
        ("0000_c1s1_000000_01.jpg", "market", (0, 1)),
        # A path is fine: only the base name is parsed.
        ("/data/Market/bounding_box_test/0002_c1s1_000451_03.jpg", "market", (2, 1)),
        # DukeMTMC-reID.
        ("0005_c2_f0046985.jpg", "market", (5, 2)),
        ("7140_c8_f0191633.jpg", "market", (7140, 8)),
        # CUHK03-NP, .png.
        ("0001_c1_1.png", "market", (1, 1)),
        ("1467_c2_10.png", "market", (1467, 2)),
        # Multi-digit cameras and upper-case extensions.
        ("0002_c12s1_000451_03.jpg", "market", (2, 12)),
        ("0002_c123_f0000001.JPG", "market", (2, 123)),
        ("0002_c1s1_000451_03.JPEG", "market", (2, 1)),
        # MSMT17: id (0000 is a real person), index, camera 01-15, date/time, frame, ...
        ("0000_000_01_0303morning_0015_0.jpg", "msmt17", (0, 1)),
        ("1040_018_15_0113noon_0853_1.jpg", "msmt17", (1040, 15)),
        ("0114_019_10_0303noon_0284_2_ex.jpg", "msmt17", (114, 10)),
        # VeRi (vehicles) through a regular expression: three-digit cameras.
        ("0002_c002_00030600_0.jpg", VERI, (2, 2)),
        ("0776_c020_00081915_1.JPG", VERI, (776, 20)),
        # A custom naming.
        ("p12_cam3_x.jpg", CUSTOM, (12, 3)),
        ("p7_cam10_y.png", CUSTOM, (7, 10)),
    ],
)
def test_parse_name(filename, naming, expected):
    assert parse_name(filename, naming) == expected
    assert parse_name(filename, naming_pattern(naming)) == expected  # a compiled pattern works too


def test_default_naming_is_market():
    assert parse_name("0002_c1s1_000451_03.jpg") == (2, 1)


def test_match_name_keeps_the_text_of_the_id():
    assert match_name("0002_c1s1_000451_03.jpg")["pid"] == "0002"
    assert match_name("p12_cam3_x.jpg", CUSTOM)["pid"] == "12"


def test_naming_keys_are_regular_expressions():
    for key, regex in NAMINGS.items():
        assert naming_pattern(key).pattern == regex
        assert naming_pattern(regex).pattern == regex  # the form saved in dataset.yaml


@pytest.mark.parametrize(
    "filename, naming",
    [
        ("Thumbs.db", "market"),
        ("0002_s1_000451_03.jpg", "market"),  # no camera
        ("c1_0002.jpg", "market"),
        ("0000_c1s1_000000_01.jpg", "msmt17"),  # a Market name is not an MSMT17 name
        ("0002_c1s1_000451_03.jpg", CUSTOM),
    ],
)
def test_names_that_do_not_match(filename, naming):
    with pytest.raises(ValueError, match=re.escape(filename) + ": name does not match the naming"):
        parse_name(filename, naming)


def test_non_integer_groups_are_a_clear_error():
    with pytest.raises(ValueError, match=r"reads pid 'ab'.*must be integers"):
        parse_name("ab_c1.jpg", r"^(?P<pid>[a-z]+)_c(?P<cam>\d+)")
    with pytest.raises(ValueError, match=r"reads pid None.*must be integers"):
        parse_name("x_c1.jpg", r"^(?P<pid>\d+)?x_c(?P<cam>\d+)")


@pytest.mark.parametrize(
    "naming, message",
    [
        (r"^(\d+)_c(\d+)", r"has no named group pid or cam"),
        (r"^(?P<person>\d+)_c(?P<cam>\d+)", r"has the named group 'person'"),
        ("duke", r"has no named group pid or cam: give one of \['market', 'msmt17'\]"),
        (r"^(?P<pid>\d+_c(?P<cam>\d+)", r"is not a valid regular expression: missing \)"),
        (r"^(?P<pid>\d+)_c(?P<pid>\d+)", r"is not a valid regular expression: redefinition of group name"),
    ],
)
def test_bad_namings(naming, message):
    with pytest.raises(ValueError, match=message):
        naming_pattern(naming)
    with pytest.raises(ValueError, match=message):
        parse_name("0002_c1s1_000451_03.jpg", naming)


# ----------------------------------------------------------------------------------------------------
# The identity-balanced sampler.


def pk_labels():
    """12 identities with 1 to 13 images: fewer than K, exactly K, several groups, leftovers."""
    return torch.arange(12).repeat_interleave(torch.tensor([1, 2, 3, 4, 5, 8, 9, 13, 4, 4, 4, 6]))


def test_pk_sampler_batches_are_p_identities_of_k_images_covering_every_identity():
    labels = pk_labels()
    sampler = PKSampler(labels, batch_size=8, num_instances=2, seed=0)  # P = 4
    groups = sum(max(1, n // 2) for n in Counter(labels.tolist()).values())
    assert len(sampler) == -(-groups // 4)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        for batch in batches:
            per_id = Counter(labels[batch].tolist())
            assert len(batch) == 8 and len(per_id) == 4 and set(per_id.values()) == {2}
        assert {int(labels[i]) for batch in batches for i in batch} == set(range(12))  # every identity
    # an identity with fewer than K images: its image twice; with 13 images: distinct images per group
    alone = [i for batch in batches for i in batch if labels[i] == 0]
    assert len(set(alone)) == 1 and len(alone) >= 2
    assert len({i for batch in batches for i in batch if labels[i] == 7}) >= 2


def test_pk_sampler_depends_only_on_seed_and_epoch():
    labels = pk_labels()
    a, b = PKSampler(labels, 8, 2, seed=5), PKSampler(labels, 8, 2, seed=5)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)  # a resumed run gets the same batches
    b.set_epoch(4)
    assert list(a) != list(b)
    assert list(PKSampler(labels, 8, 2, seed=6)) != list(PKSampler(labels, 8, 2, seed=5))


def test_pk_sampler_distributed_shares_are_disjoint_equal_and_reshuffled():
    labels = pk_labels()
    ranks = [PKSampler(labels, 4, 2, seed=0, num_replicas=2, rank=r) for r in range(2)]
    shares = {}
    for epoch in (0, 1):
        ids = []
        for sampler in ranks:
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert len(batches) == len(ranks[0]) == len(sampler)  # every process steps as often
            ids.append({int(labels[i]) for batch in batches for i in batch})
        assert not ids[0] & ids[1] and ids[0] | ids[1] == set(range(12))
        shares[epoch] = ids[0]
    assert shares[0] != shares[1]


def test_pk_sampler_checks_and_speed():
    with pytest.raises(ValueError, match="not a multiple"):
        PKSampler(pk_labels(), 6, 4)
    with pytest.raises(ValueError, match="12 identities, fewer than 8 per batch x 2 processes"):
        PKSampler(pk_labels(), 16, 2, num_replicas=2)
    # A large epoch: 100,000 images of 5,000 identities.
    labels = torch.randint(0, 5000, (100_000,), generator=torch.Generator().manual_seed(0))
    sampler = PKSampler(labels, 64, 4)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 1400


# ----------------------------------------------------------------------------------------------------
# Own data: camera-less namings, ids from folders, ids that are names.


def test_camera_less_naming_gives_each_image_a_camera_of_its_own():
    naming = r"^(?P<pid>\d+)_"
    pid, cam = parse_name("0002_a.jpg", naming)
    assert pid == 2 and cam == own_camera("0002_a.jpg") and 1 <= cam <= 2**48
    assert parse_name("/elsewhere/0002_a.jpg", naming) == (2, cam)  # the same file name, the same camera
    assert parse_name("0002_b.jpg", naming)[1] != cam


def test_ids_from_folders_and_cameras_from_names():
    ids = {"alice": 1, "bob": 2}
    assert image_labels("/data/alice/0001.jpg", None, ids) == (1, own_camera("0001.jpg"))
    assert image_labels("/data/bob/x_cam3_1.jpg", r"_cam(?P<cam>\d+)_", ids) == (2, 3)
    assert id_text("/data/bob/x_cam3_1.jpg", r"_cam(?P<cam>\d+)_") == "bob"
    assert image_labels("/data/0007/0001.jpg", None) == (7, own_camera("0001.jpg"))  # integer folder names
    with pytest.raises(ValueError, match="id 'carol' is not in the table of ids of dataset.yaml"):
        image_labels("/data/carol/0001.jpg", None, ids)
    with pytest.raises(ValueError, match="has no named group pid: the ids are folder names"):
        parse_name("x_cam3_1.jpg", r"_cam(?P<cam>\d+)_")
    with pytest.raises(ValueError, match="does not match the naming"):
        image_labels("/data/bob/x.jpg", r"_cam(?P<cam>\d+)_", ids)


def test_ids_that_are_names_go_through_the_table():
    naming = r"^(?P<pid>[a-z]+)_cam(?P<cam>\d+)_"
    table = number_ids(["bob", "alice", "bob", "carol"])
    assert table == {"alice": 1, "bob": 2, "carol": 3}
    assert image_labels("alice_cam1_0001.jpg", naming, table) == (1, 1)
    assert image_labels("carol_cam2_0001.jpg", naming, table) == (3, 2)
    with pytest.raises(ValueError, match=r"reads pid 'alice'.*must be integers \(prepare.py numbers"):
        image_labels("alice_cam1_0001.jpg", naming)
    assert number_ids(["0002", "-1", "0000"]) is None  # integers are the ids themselves
    assert number_ids(["0002", "x"]) == {"0002": 1, "x": 2}


def test_dataset_yaml_gives_naming_and_ids(tmp_path):
    assert read_naming(tmp_path).pattern == NAMINGS["market"] and read_ids(tmp_path) is None
    save_yaml(tmp_path / "dataset.yaml", {"naming": None, "ids": {"alice": 1}})
    assert read_naming(tmp_path).pattern == "" and read_ids(tmp_path) == {"alice": 1}


# ----------------------------------------------------------------------------------------------------
# Images of every mode, as 8-bit RGB.


def saved(tmp_path, img: Image.Image, name: str, **params) -> str:
    path = tmp_path / name
    img.save(path, **params)
    return str(path)


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64 * 32).reshape(64, 32) * 32).astype(np.uint16)  # 0 .. 65504
    path = saved(tmp_path, Image.fromarray(ramp), "grey16.png")
    with Image.open(path) as img:
        assert img.mode == "I;16"
    rgb = np.asarray(load_image(path), dtype=np.int64)
    assert rgb.shape == (64, 32, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    assert np.abs(rgb[..., 0] - ramp / 257).max() <= 0.5  # Pillow alone: 99% of the pixels 255
    # 32-bit integer grey (mode I) of 16-bit values, as older Pillow opens such PNGs.
    as_i = Image.fromarray(ramp.astype(np.int32))
    assert as_i.mode == "I"
    assert (
        np.abs(np.asarray(load_image(saved(tmp_path, as_i, "grey32.tif")))[..., 1] - ramp / 257).max() <= 0.5
    )


def test_transparency_is_laid_over_the_mean_colour(tmp_path):
    mean = np.round(255 * np.array(IMAGENET_MEAN))
    rgba = np.zeros((8, 4, 4), dtype=np.uint8)
    rgba[:4] = (200, 10, 10, 255)  # opaque red top half; transparent (black) bottom half
    for img, name in [
        (Image.fromarray(rgba), "rgba.png"),
        (Image.fromarray(rgba).convert("LA"), "la.png"),
        (Image.fromarray(rgba).convert("RGB").quantize(4), "palette.png"),
    ]:
        if img.mode == "P":  # the palette index of the bottom half is transparent
            img.info["transparency"] = img.getpixel((0, 7))
            path = saved(tmp_path, img, name, transparency=img.getpixel((0, 7)))
        else:
            path = saved(tmp_path, img, name)
        rgb = np.asarray(load_image(path), dtype=np.int64)
        assert np.abs(rgb[6] - mean).max() <= 1, name
        assert rgb[1, 0, 0] > 50 + rgb[1, 0, 2] or img.mode == "LA", name  # the opaque part kept


def test_palette_cmyk_one_bit_and_exif_rotation(tmp_path):
    pixels = np.zeros((8, 4, 3), dtype=np.uint8)
    pixels[:4] = (250, 20, 20)
    pixels[4:] = (20, 20, 250)
    palette = Image.fromarray(pixels).quantize(2)
    assert np.abs(np.asarray(load_image(saved(tmp_path, palette, "p.png"))).astype(int) - pixels).max() <= 5
    cmyk = Image.fromarray(pixels).convert("CMYK")
    rgb = np.asarray(load_image(saved(tmp_path, cmyk, "cmyk.jpg", quality=100)), dtype=np.int64)
    assert rgb[1, 1, 0] > 200 and rgb[6, 1, 2] > 200
    one_bit = Image.fromarray(pixels[..., 0] > 100).convert("1")
    assert np.asarray(load_image(saved(tmp_path, one_bit, "b.png")))[0, 0].tolist() == [255, 255, 255]
    # A photo stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to view).
    exif = Image.Exif()
    exif[0x0112] = 6
    path = saved(tmp_path, Image.fromarray(pixels), "phone.jpg", exif=exif.tobytes(), quality=100)
    upright = load_image(path)
    assert upright.size == (8, 4)  # (width, height): turned upright
    assert np.asarray(upright)[2, 0, 2] > 200 and np.asarray(upright)[2, -1, 0] > 200


def test_unreadable_image_is_a_user_error(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"not an image")
    with pytest.raises(UserError, match="broken.jpg: cannot read the image"):
        load_image(path)
