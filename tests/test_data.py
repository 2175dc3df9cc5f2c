"""data.py: one parser for every dataset naming (clear errors for bad namings), listing images, the
identity-balanced sampler."""

import re
import time
from collections import Counter

import pytest
import torch

from data import NAMINGS, PKSampler, match_name, naming_pattern, parse_name

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
        (r"^(?P<pid>\d+)_", r"has no named group cam"),
        (r"^(\d+)_c(\d+)", r"has no named group pid or cam"),
        (r"^(?P<person>\d+)_c(?P<cam>\d+)", r"has no named group pid"),
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
    # No per-epoch stall: an epoch of 100,000 images (5,000 identities), vectorised, well under a second.
    labels = torch.randint(0, 5000, (100_000,), generator=torch.Generator().manual_seed(0))
    sampler = PKSampler(labels, 64, 4)
    start = time.perf_counter()
    batches = list(sampler)
    assert time.perf_counter() - start < 2.0
    assert len(batches) == len(sampler) > 1400
