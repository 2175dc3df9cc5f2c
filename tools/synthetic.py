"""Write a synthetic person re-ID dataset in the exact Market-1501 layout, from a seed.

The output folder holds what the Market-1501 archive holds, with the same file naming
`PPPP_cCsS_FFFFFF_NN.jpg` (person id, camera, sequence, frame, box index), 128x64 RGB JPEGs:

    bounding_box_train/  images of the train identities (about half of --num_ids)
    bounding_box_test/   gallery: the other images of the test identities in all their cameras, plus
                         junk (id -1, ignored by the metric) and distractors (id 0000, never a match)
    query/               one image per (test identity, camera)
    gt_bbox/             each query image and --multi_query more images of the same identity and
                         camera, for multi-query evaluation
    SYNTHETIC.txt        the options; it marks the folder as one that a new run may replace as a whole

Train and test identities are disjoint and every identity is seen by at least two cameras, so every
query has a true match in another camera. A person is drawn with fixed clothing colours and patterns,
build, hair, skin, hat and bag, which different identities partly share; each camera has its own
background, lighting, colour cast, scale and blur, and every image gets its own pose, position,
facing, occlusion and noise. Every image has its own numpy Generator derived from (seed, what, who),
so the same seed gives byte-identical files.

    python tools/synthetic.py --out data/synthetic --seed 0
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the toolkit's libraries
from utils import UserError, check_replaceable, replace_folder, run_main

HEIGHT, WIDTH = 128, 64  # Market-1501 image size
FOLDERS = ("bounding_box_train", "bounding_box_test", "query", "gt_bbox")
MARKER = "SYNTHETIC.txt"
MARKER_HEADER = "# Synthetic person re-ID dataset (Market-1501 layout) written by synthetic.py"
JPEG_QUALITY = 90
NUM_SEQUENCES = 6  # Market-1501 names use sequences s1..s6 in every camera
BACKGROUND_MARGIN = 32  # a camera's background is this much larger than an image, cropped at random

# Palettes of RGB colours. Identities draw from small palettes (with a little per-identity jitter),
# so two people often share one cue, such as a red shirt, but rarely all of them.
UPPER_COLOURS = [
    (210, 35, 40), (240, 130, 30), (235, 210, 50), (150, 210, 60), (40, 140, 60), (20, 150, 150),
    (80, 200, 230), (40, 70, 210), (30, 40, 110), (130, 60, 180), (200, 50, 150), (240, 150, 190),
    (240, 240, 240), (140, 140, 140), (25, 25, 25), (120, 75, 40), (215, 195, 150),
]  # fmt: skip
LOWER_COLOURS = [
    (25, 25, 30), (30, 40, 100), (60, 95, 165), (140, 170, 210), (130, 130, 130), (195, 175, 120),
    (110, 70, 40), (235, 235, 230), (60, 100, 50), (170, 35, 45),
]  # fmt: skip
HAIR_COLOURS = [(20, 15, 15), (60, 40, 25), (115, 80, 45), (215, 185, 115), (160, 160, 160), (150, 60, 30)]
SKIN_TONES = [(240, 205, 180), (220, 170, 130), (180, 130, 90), (115, 80, 55)]
SHOE_COLOURS = [(20, 20, 20), (235, 235, 235), (100, 60, 30), (130, 130, 140), (190, 40, 40)]
UPPER_PATTERNS = ("solid", "stripes", "checks", "open_jacket")
LOWER_STYLES = ("trousers", "shorts", "skirt")
BAGS = ("none", "backpack", "shoulder_bag", "handbag")
BACKGROUNDS = ("windows", "bricks", "gradient", "diagonal", "foliage")


# ----------------------------------------------------------------------------------------------------
# Random draws: one Generator per (seed, what, who), so one image never depends on another's draws.


def make_rng(seed: int, *key: int) -> np.random.Generator:
    """A Generator for one `key`, such as (TAG_IMAGE, pid, cam, k): non-negative integers."""
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


# Tags for the `what` part of a Generator key.
TAG_SPLIT, TAG_IDENTITY, TAG_CAMERA, TAG_TRACK, TAG_IMAGE, TAG_JUNK, TAG_DISTRACTOR = range(7)


def pick(rng: np.random.Generator, options, p=None):
    return options[rng.choice(len(options), p=p)]


def jitter(rng: np.random.Generator, colour, amount: int = 12) -> tuple:
    return tuple(int(c) for c in np.clip(np.asarray(colour) + rng.integers(-amount, amount + 1, 3), 0, 255))


def make_identity(rng: np.random.Generator) -> dict:
    """Draw the appearance of one person: what stays the same in every camera."""
    return {
        "height": rng.uniform(0.84, 1.0),  # build, as a fraction of the canonical 116 px figure
        "width": rng.uniform(0.82, 1.22),
        "upper": jitter(rng, pick(rng, UPPER_COLOURS)),
        "upper_pattern": pick(rng, UPPER_PATTERNS, p=[0.45, 0.2, 0.15, 0.2]),
        "upper_second": jitter(rng, pick(rng, UPPER_COLOURS)),
        "pattern_period": int(rng.integers(4, 8)),
        "long_sleeves": bool(rng.random() < 0.6),
        "lower": jitter(rng, pick(rng, LOWER_COLOURS)),
        "lower_style": pick(rng, LOWER_STYLES, p=[0.6, 0.25, 0.15]),
        "skin": jitter(rng, pick(rng, SKIN_TONES), 8),
        "hair": jitter(rng, pick(rng, HAIR_COLOURS), 8),
        "long_hair": bool(rng.random() < 0.35),
        "hat": jitter(rng, pick(rng, UPPER_COLOURS)) if rng.random() < 0.2 else None,
        "shoes": pick(rng, SHOE_COLOURS),
        "bag": pick(rng, BAGS, p=[0.45, 0.2, 0.2, 0.15]),
        "bag_colour": jitter(rng, pick(rng, UPPER_COLOURS)),
    }


def make_camera(rng: np.random.Generator, background: str) -> dict:
    """Draw what one camera does to every image it takes."""
    camera = {"background": make_background(rng, background)}
    camera["gain"] = rng.uniform(0.8, 1.2)  # brightness
    camera["contrast"] = rng.uniform(0.85, 1.15)
    camera["cast"] = np.clip(1.0 + rng.normal(0.0, 0.07, 3), 0.85, 1.15).astype(np.float32)  # a mild tint
    camera["scale"] = rng.uniform(0.88, 1.0)
    camera["blur"] = rng.uniform(0.0, 1.0)  # box blur radius in pixels
    # Sensor noise, cropped at random per image (drawing fresh noise would double the run time).
    noise = rng.standard_normal((HEIGHT + BACKGROUND_MARGIN, WIDTH + BACKGROUND_MARGIN, 3), dtype=np.float32)
    camera["noise"] = noise * np.float32(rng.uniform(2.0, 6.0))
    return camera


# ----------------------------------------------------------------------------------------------------
# Drawing.


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Noise in [0, 1] with blobs about height / cells in size, shape (height, width)."""
    grid = rng.random((cells, max(2, cells * width // height))).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BILINEAR))


def make_background(rng: np.random.Generator, kind: str) -> np.ndarray:
    """A camera's scene, larger than an image: uint8 of shape (H + margin, W + margin, 3)."""
    h, w = HEIGHT + BACKGROUND_MARGIN, WIDTH + BACKGROUND_MARGIN
    # Greyish scenes (walls, pavement) with a tint, light or dark: they change many pixels between
    # cameras but compete less with the colours of the clothes than saturated ones would.
    base = rng.uniform(70, 210) + rng.uniform(-35, 35, 3)
    other = np.clip(base + rng.uniform(-80, 80) + rng.uniform(-25, 25, 3), 0, 255)
    y, x = np.mgrid[0:h, 0:w]
    if kind == "windows":
        size = rng.integers(10, 18)
        mask = (y % size < size * 0.6) & (x % size < size * 0.5)
    elif kind == "bricks":
        size = rng.integers(6, 10)
        row = y // size
        mask = ((y % size) != 0) & (((x + (row % 2) * size) % (2 * size)) != 0)
    elif kind == "gradient":
        mask = (y / h + 0.3 * smooth_noise(rng, h, w, 4)) > 0.6
    elif kind == "diagonal":
        size = rng.integers(8, 16)
        mask = ((x + y) // size) % 2 == 0
    else:  # foliage
        mask = smooth_noise(rng, h, w, 12) > 0.5
    image = np.where(mask[..., None], base, other)
    # The floor: a band of another colour under a horizon at a camera-specific height.
    horizon = int(h * rng.uniform(0.6, 0.8))
    image[horizon:] = rng.uniform(60, 200) * rng.uniform(0.85, 1.15, 3)
    image[horizon:] += 25 * (smooth_noise(rng, h - horizon, w, 3)[..., None] - 0.5)
    return np.clip(image, 0, 255).astype(np.uint8)


# The figure is laid out in canonical coordinates: centred, feet at y = 122, 116 px tall at height 1.
# An image maps it by scaling about the feet, mirroring (facing the other way) and shifting.
ANCHOR_X, ANCHOR_Y = WIDTH / 2, HEIGHT - 6.0


def canonical_grid(scale: float, dx: float, dy: float, mirror: int) -> tuple[np.ndarray, np.ndarray]:
    """Canonical coordinates of the pixel centres: x of shape (1, WIDTH), y of shape (HEIGHT, 1)."""
    x = ANCHOR_X + (np.arange(WIDTH) + 0.5 - ANCHOR_X - dx) / (mirror * scale)
    y = ANCHOR_Y + (np.arange(HEIGHT) + 0.5 - ANCHOR_Y - dy) / scale
    return x[None, :], y[:, None]


def upper_clothing(person: dict, scale: float, dx: float, dy: float, mirror: int) -> Image.Image:
    """The shirt pattern over the whole image (RGB), to be cut out by the torso mask."""
    x, y = canonical_grid(scale, dx, dy, mirror)
    period, kind = person["pattern_period"], person["upper_pattern"]
    if kind == "stripes":
        mask = np.broadcast_to((y // period) % 2 == 0, (HEIGHT, WIDTH))
    elif kind == "checks":
        mask = ((y // period) + (x // period)) % 2 == 0
    else:  # open_jacket: a shirt of the second colour showing down the middle
        mask = np.broadcast_to(np.abs(x - ANCHOR_X) > 3 * person["width"], (HEIGHT, WIDTH))
    rgb = np.where(
        mask[..., None], np.array(person["upper"], np.uint8), np.array(person["upper_second"], np.uint8)
    )
    return Image.fromarray(rgb)


def draw_person(
    scene: Image.Image, person: dict, rng: np.random.Generator, scale: float, dx: float, dy: float, flip: bool
) -> None:
    """Draw `person` in a random pose onto `scene` (RGB, 128x64), in place.

    The pose (stride, arm swing) comes from `rng`; the figure is scaled by `scale` about its feet,
    mirrored when `flip`, and moved by (dx, dy) pixels.
    """
    mirror = -1 if flip else 1

    def pt(x, y):
        return (ANCHOR_X + dx + mirror * scale * (x - ANCHOR_X), ANCHOR_Y + dy + scale * (y - ANCHOR_Y))

    def poly(*points):
        return [pt(x, y) for x, y in points]

    def box(x0, y0, x1, y1):
        (a, b), (c, d) = pt(x0, y0), pt(x1, y1)
        return [min(a, c), min(b, d), max(a, c), max(b, d)]

    def trapezoid(x0, y0, half0, x1, y1, half1):
        """Top edge centred at (x0, y0), `half0` wide on each side; bottom edge likewise."""
        return poly((x0 - half0, y0), (x0 + half0, y0), (x1 + half1, y1), (x1 - half1, y1))

    def thick(w):
        return max(1, round(w * scale))

    draw = ImageDraw.Draw(scene)
    u = person["height"]  # canonical pixels per unit of the figure
    wf = person["width"] * u
    cx, foot = ANCHOR_X, 122.0
    top = foot - 116 * u
    neck, hip = top + 17 * u, top + 60 * u
    knee = (hip + foot) / 2
    stride = rng.uniform(-7, 7) * u  # pose: legs apart or crossed, arms swinging
    swing = rng.uniform(-0.35, 0.35)
    skin, upper, lower, bag = person["skin"], person["upper"], person["lower"], person["bag_colour"]

    if person["bag"] == "backpack":  # behind the torso, showing on both sides
        draw.rounded_rectangle(box(cx - 16 * wf, neck + 3 * u, cx + 16 * wf, hip - 6 * u), thick(3), fill=bag)
    if person["long_hair"]:
        draw.rectangle(box(cx - 7.5 * u, top + 4 * u, cx + 7.5 * u, neck + 8 * u), fill=person["hair"])

    # Legs: skin under shorts and skirts, then the lower garment, then the shoes.
    for side in (-1, 1):
        hip_x = cx + side * 5.5 * wf
        foot_x = hip_x + side * stride
        garment = lower if person["lower_style"] == "trousers" else skin
        draw.polygon(trapezoid(hip_x, hip, 4.5 * wf, foot_x, foot, 3.5 * wf), fill=garment)
        if person["lower_style"] == "shorts":  # the top 45% of the leg
            short_x, short_y = hip_x + 0.45 * (foot_x - hip_x), hip + 0.45 * (foot - hip)
            draw.polygon(trapezoid(hip_x, hip, 4.5 * wf, short_x, short_y, 4 * wf), fill=lower)
        shoe = box(foot_x - 5 * wf, foot - 3.5 * u, foot_x + 5 * wf, foot + 1.5 * u)
        draw.ellipse(shoe, fill=person["shoes"])
    if person["lower_style"] == "skirt":
        draw.polygon(trapezoid(cx, hip - 2 * u, 11 * wf, cx, knee + 4 * u, 16 * wf), fill=lower)

    # Torso: solid, or the clothing pattern cut out by the torso shape.
    torso = trapezoid(cx, neck, 13 * wf, cx, hip + 2 * u, 11 * wf)
    if person["upper_pattern"] == "solid":
        draw.polygon(torso, fill=upper)
    else:
        mask = Image.new("L", (WIDTH, HEIGHT), 0)
        ImageDraw.Draw(mask).polygon(torso, fill=255)
        scene.paste(upper_clothing(person, scale, dx, dy, mirror), (0, 0), mask)

    # Arms: a sleeve (short or long) over skin, at a swing angle that changes per image.
    for side in (-1, 1):
        angle = side * (0.12 + abs(swing) * 0.3) + swing * (1 if side > 0 else -0.6)
        shoulder_x, shoulder_y = cx + side * 12 * wf, neck + 3 * u
        hand_x, hand_y = shoulder_x + 38 * u * np.sin(angle), shoulder_y + 38 * u * np.cos(angle)
        sleeve = 1.0 if person["long_sleeves"] else 0.25  # the part of the arm it covers
        sleeve_x = shoulder_x + sleeve * (hand_x - shoulder_x)
        sleeve_y = shoulder_y + sleeve * (hand_y - shoulder_y)
        draw.line(poly((shoulder_x, shoulder_y), (hand_x, hand_y)), fill=skin, width=thick(5 * u))
        draw.line(poly((shoulder_x, shoulder_y), (sleeve_x, sleeve_y)), fill=upper, width=thick(6 * u))
        draw.ellipse(box(hand_x - 2.5 * u, hand_y - 2.5 * u, hand_x + 2.5 * u, hand_y + 2.5 * u), fill=skin)
        if person["bag"] == "handbag" and side > 0:
            draw.line(poly((hand_x, hand_y), (hand_x, hand_y + 4 * u)), fill=bag, width=1)
            draw.rectangle(box(hand_x - 4.5 * u, hand_y + 3 * u, hand_x + 4.5 * u, hand_y + 12 * u), fill=bag)

    # Head, hair and hat.
    draw.rectangle(box(cx - 3 * u, neck - 4 * u, cx + 3 * u, neck + 1), fill=skin)
    draw.ellipse(box(cx - 7 * u, top, cx + 7 * u, top + 15 * u), fill=skin)
    draw.chord(box(cx - 7.5 * u, top - 0.5 * u, cx + 7.5 * u, top + 13 * u), 180, 360, fill=person["hair"])
    if person["hat"] is not None:
        draw.rectangle(box(cx - 7 * u, top - 3 * u, cx + 7 * u, top + 4 * u), fill=person["hat"])
        draw.rectangle(box(cx - 10 * u, top + 3 * u, cx + 3 * u, top + 5 * u), fill=person["hat"])

    if person["bag"] == "shoulder_bag":  # a strap across the chest to a bag on the hip
        draw.line(poly((cx - 11 * wf, neck + 1), (cx + 12 * wf, hip - 4 * u)), fill=bag, width=thick(2 * u))
        draw.rectangle(box(cx + 10 * wf, hip - 8 * u, cx + 20 * wf, hip + 4 * u), fill=bag)
    elif person["bag"] == "backpack":  # the straps
        for side in (-1, 1):
            strap = poly((cx + side * 7 * wf, neck), (cx + side * 8 * wf, hip - 8 * u))
            draw.line(strap, fill=bag, width=thick(2))


def background_crop(camera: dict, rng: np.random.Generator) -> Image.Image:
    """A random 128x64 window of the camera's scene (RGB)."""
    y, x = rng.integers(0, BACKGROUND_MARGIN + 1, 2)
    return Image.fromarray(camera["background"][y : y + HEIGHT, x : x + WIDTH])


def photograph(scene: Image.Image, camera: dict, rng: np.random.Generator) -> Image.Image:
    """Apply the camera (blur, lighting, colour cast, noise) to an RGB image of shape 128x64."""
    radius = camera["blur"] + rng.uniform(0.0, 0.4)
    if radius > 0.3:  # a box blur: a Gaussian one costs three times as much and looks the same here
        scene = scene.filter(ImageFilter.BoxBlur(radius))
    pixels = np.array(scene, dtype=np.float32)
    pixels *= camera["cast"] * np.float32(camera["gain"] * rng.uniform(0.93, 1.07))
    mean = pixels.mean()
    pixels = (pixels - mean) * np.float32(camera["contrast"] * rng.uniform(0.94, 1.06)) + (mean + 0.5)
    y, x = rng.integers(0, BACKGROUND_MARGIN + 1, 2)
    pixels += camera["noise"][y : y + HEIGHT, x : x + WIDTH]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def occlude(scene: Image.Image, rng: np.random.Generator) -> None:
    """Cover part of the body with a box (a car, a bin, another person's back), in place.

    The box comes up from the bottom (up to the hips) or in from one side (up to about the middle),
    so that enough of the person stays visible to be recognised.
    """
    if rng.random() < 0.4:  # from the bottom
        w, h = int(rng.integers(20, 50)), int(rng.integers(16, 40))
        x0, y0 = int(rng.integers(-10, WIDTH - w + 10)), HEIGHT - h
    else:  # from the left or the right
        w, h = int(rng.integers(14, 30)), int(rng.integers(20, 50))
        x0 = -int(rng.integers(0, 8)) if rng.random() < 0.5 else WIDTH - w + int(rng.integers(0, 8))
        y0 = int(rng.integers(10, HEIGHT - h))
    colour = tuple(int(c) for c in rng.integers(20, 235, 3))
    ImageDraw.Draw(scene).rectangle([x0, y0, x0 + w, y0 + h], fill=colour)


def render(person: dict, camera: dict, rng: np.random.Generator) -> Image.Image:
    """One image of `person` taken by `camera`: a 128x64 RGB image."""
    scene = background_crop(camera, rng)
    scale = camera["scale"] * rng.uniform(0.92, 1.06)
    draw_person(scene, person, rng, scale, rng.uniform(-5, 5), rng.uniform(-4, 4), rng.random() < 0.5)
    if rng.random() < 0.25:
        occlude(scene, rng)
    return photograph(scene, camera, rng)


def render_junk(person: dict, camera: dict, rng: np.random.Generator) -> Image.Image:
    """A bad detection of a person (id -1): a fragment, far too small, or mostly outside the box."""
    scene = background_crop(camera, rng)
    kind = rng.integers(3)
    if kind == 0:  # zoomed in on a part of the body
        scale, dx, dy = rng.uniform(1.8, 2.8), rng.uniform(-30, 30), rng.uniform(0, 160)
    elif kind == 1:  # far too small
        scale, dx, dy = rng.uniform(0.3, 0.5), rng.uniform(-20, 20), rng.uniform(-20, 0)
    else:  # half outside the box
        scale, dx, dy = rng.uniform(0.8, 1.0), rng.choice([-1, 1]) * rng.uniform(28, 40), rng.uniform(-4, 40)
    draw_person(scene, person, rng, scale, dx, dy, rng.random() < 0.5)
    return photograph(scene, camera, rng)


def render_distractor(camera: dict, rng: np.random.Generator) -> Image.Image:
    """A false detection (id 0000): background with clutter such as poles, signs and boxes."""
    scene = background_crop(camera, rng)
    draw = ImageDraw.Draw(scene)
    for _ in range(rng.integers(1, 4)):
        colour = tuple(int(c) for c in rng.integers(20, 235, 3))
        if rng.random() < 0.5:  # a pole
            x = int(rng.integers(0, WIDTH))
            draw.rectangle([x, 0, x + int(rng.integers(3, 10)), HEIGHT], fill=colour)
        else:
            x, y = int(rng.integers(-10, WIDTH)), int(rng.integers(0, HEIGHT))
            draw.rectangle([x, y, x + int(rng.integers(10, 40)), y + int(rng.integers(10, 50))], fill=colour)
    return photograph(scene, camera, rng)


# ----------------------------------------------------------------------------------------------------
# The dataset: which identity is seen by which camera, the file names, the folders.


def image_name(pid: int, cam: int, seq: int, frame: int, box: int) -> str:
    """Market-1501 naming: `0002_c1s1_000451_03.jpg`; the junk id -1 is written `-1`."""
    person = "-1" if pid == -1 else f"{pid:04d}"
    return f"{person}_c{cam}s{seq}_{frame:06d}_{box:02d}.jpg"


def track_frames(rng: np.random.Generator, count: int) -> list[int]:
    """`count` increasing frame numbers of one person passing one camera."""
    start = int(rng.integers(0, 150_000))
    return (start + np.cumsum(rng.integers(5, 60, count))).tolist()


def check_options(
    num_ids: int, num_cams: int, images_per_cam: int, multi_query: int, junk: int, distractors: int
) -> None:
    if not 2 <= num_ids <= 9999:
        raise UserError(f"--num_ids must be between 2 and 9999 (4-digit person ids), got {num_ids}")
    if not 2 <= num_cams <= 9:
        raise UserError(
            f"--num_cams must be between 2 and 9 (one-digit cameras as in Market-1501), got {num_cams}"
        )
    if images_per_cam < 1:
        raise UserError(f"--images_per_cam must be at least 1, got {images_per_cam}")
    for name, value in (("--multi_query", multi_query), ("--junk", junk), ("--distractors", distractors)):
        if value < 0:
            raise UserError(f"{name} must be 0 or more, got {value}")


def write_images(out: Path, options: dict) -> dict:
    """Render the whole dataset into `out` (already created) and return the image counts."""
    seed, num_ids, num_cams = options["seed"], options["num_ids"], options["num_cams"]
    for folder in FOLDERS:
        (out / folder).mkdir()

    def save(image: Image.Image, folder: str, name: str) -> None:
        image.save(out / folder / name, "JPEG", quality=JPEG_QUALITY)

    # Market mixes train and test ids over one range of person ids: split 1..num_ids at random.
    pids = make_rng(seed, TAG_SPLIT).permutation(np.arange(1, num_ids + 1))
    train_pids = set(pids[: num_ids // 2].tolist())
    # Each camera its own kind of scene (in turn, when there are more cameras than kinds).
    kinds = [BACKGROUNDS[i] for i in make_rng(seed, TAG_SPLIT, 1).permutation(len(BACKGROUNDS))]
    cameras = {
        cam: make_camera(make_rng(seed, TAG_CAMERA, cam), kinds[(cam - 1) % len(kinds)])
        for cam in range(1, num_cams + 1)
    }
    counts = dict.fromkeys(FOLDERS, 0) | {"junk": 0, "distractors": 0}

    for pid in range(1, num_ids + 1):
        person = make_identity(make_rng(seed, TAG_IDENTITY, pid))
        plan = make_rng(seed, TAG_TRACK, pid)
        n_cams = int(plan.integers(2, num_cams + 1))
        seen_by = sorted(plan.choice(np.arange(1, num_cams + 1), n_cams, replace=False).tolist())
        for cam in seen_by:
            # Gallery (or train) images, then for a test id one query and its multi-query images.
            n_gallery = int(plan.integers(1, 2 * options["images_per_cam"]))
            n_query = 0 if pid in train_pids else 1 + options["multi_query"]
            seq = int(plan.integers(1, NUM_SEQUENCES + 1))
            frames = track_frames(plan, n_gallery + n_query)
            boxes = plan.integers(1, 4, n_gallery)
            for k, frame in enumerate(frames):
                image = render(person, cameras[cam], make_rng(seed, TAG_IMAGE, pid, cam, k))
                if k < n_gallery:
                    folder = "bounding_box_train" if pid in train_pids else "bounding_box_test"
                    save(image, folder, image_name(pid, cam, seq, frame, int(boxes[k])))
                    counts[folder] += 1
                else:  # hand-drawn boxes have index 00; the query is also one of gt_bbox's images
                    name = image_name(pid, cam, seq, frame, 0)
                    if k == n_gallery:
                        save(image, "query", name)
                        counts["query"] += 1
                    save(image, "gt_bbox", name)
                    counts["gt_bbox"] += 1

    # Junk and distractors: numbered per camera so that their names are unique.
    for kind, count in (("junk", options["junk"]), ("distractors", options["distractors"])):
        tag, pid = (TAG_JUNK, -1) if kind == "junk" else (TAG_DISTRACTOR, 0)
        plan = make_rng(seed, tag)
        cams = plan.integers(1, num_cams + 1, count)
        next_frame = dict.fromkeys(range(1, num_cams + 1), 0)
        for k, cam in enumerate(cams.tolist()):
            next_frame[cam] += int(plan.integers(5, 200))
            rng = make_rng(seed, tag, k)
            if kind == "junk":
                image = render_junk(make_identity(rng), cameras[cam], rng)
            else:
                image = render_distractor(cameras[cam], rng)
            seq, box = int(plan.integers(1, NUM_SEQUENCES + 1)), int(plan.integers(1, 10))
            save(image, "bounding_box_test", image_name(pid, cam, seq, next_frame[cam], box))
        counts["bounding_box_test"] += count
        counts[kind] = count
    counts["train_ids"] = len(train_pids)
    counts["test_ids"] = num_ids - len(train_pids)
    return counts


def generate(
    out_dir: str | Path,
    num_ids: int = 200,
    num_cams: int = 6,
    images_per_cam: int = 2,
    multi_query: int = 2,
    junk: int = 100,
    distractors: int = 100,
    seed: int = 0,
) -> dict:
    """Write a synthetic dataset in Market-1501 layout to `out_dir` and return the counts.

    The counts are the images per folder, `junk` and `distractors` (included in bounding_box_test),
    `train_ids` and `test_ids`. Half the identities (rounded down) are train ids; each identity is
    seen by 2..num_cams cameras with 1..2*images_per_cam-1 train or gallery images per camera.
    The data are written to a temporary folder next to `out_dir` and moved in when complete. A
    non-empty `out_dir` must be an earlier synthetic output (it has SYNTHETIC.txt): it is replaced as
    a whole, including anything made from it inside it, such as prepare.py's `pytorch/` tree.
    """
    check_options(num_ids, num_cams, images_per_cam, multi_query, junk, distractors)
    out = Path(out_dir)
    check_replaceable(out, MARKER, MARKER_HEADER, "synthetic.py", "--out")
    options = {
        "seed": seed,
        "num_ids": num_ids,
        "num_cams": num_cams,
        "images_per_cam": images_per_cam,
        "multi_query": multi_query,
        "junk": junk,
        "distractors": distractors,
    }
    counts = {}

    def build(tmp: Path) -> None:
        # An earlier output goes as a whole, with what was made from it (such as prepare.py's
        # `pytorch/` tree of links to its images), so nothing stale is left next to the new images.
        counts.update(write_images(tmp, options))
        with open(tmp / MARKER, "w") as f:
            f.write(MARKER_HEADER + "\n")
            yaml.safe_dump({"options": options, "counts": counts}, f, sort_keys=False)

    replace_folder(out, build)
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--out",
        default="data/synthetic",
        help="output folder: new, empty, or an earlier output (replaced as a whole)",
    )
    parser.add_argument("--num_ids", type=int, default=200, help="identities in all; half are train ids")
    parser.add_argument("--num_cams", type=int, default=6, help="cameras (2-9)")
    parser.add_argument(
        "--images_per_cam", type=int, default=2, help="mean train/gallery images per identity and camera"
    )
    parser.add_argument(
        "--multi_query", type=int, default=2, help="gt_bbox images per query besides the query"
    )
    parser.add_argument("--junk", type=int, default=100, help="junk images (id -1) in bounding_box_test")
    parser.add_argument(
        "--distractors", type=int, default=100, help="distractor images (id 0000) in bounding_box_test"
    )
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same bytes")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    counts = generate(
        args.out,
        num_ids=args.num_ids,
        num_cams=args.num_cams,
        images_per_cam=args.images_per_cam,
        multi_query=args.multi_query,
        junk=args.junk,
        distractors=args.distractors,
        seed=args.seed,
    )
    images = ", ".join(f"{folder} {counts[folder]}" for folder in FOLDERS)
    print(
        f"wrote {args.out}: {counts['train_ids']} train + {counts['test_ids']} test ids, "
        f"{args.num_cams} cameras; images: {images} (junk {counts['junk']}, "
        f"distractors {counts['distractors']} in bounding_box_test); {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    run_main(main)
