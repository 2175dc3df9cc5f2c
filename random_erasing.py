"""Random erasing augmentation (Zhong et al., "Random Erasing Data Augmentation", AAAI 2020)."""

import math
import random

import torch


class RandomErasing:
    """With probability `p`, replace a random rectangle of a (C, H, W) image tensor by `value`.

    The rectangle covers a fraction in [sl, sh] of the image area with an aspect ratio in
    [r1, 1/r1] (log-uniform). Applied after normalisation, so the default value 0 is the mean pixel.
    Uses Python's `random`, which torch seeds in every DataLoader worker.
    """

    def __init__(self, p: float = 0.5, sl: float = 0.02, sh: float = 0.4, r1: float = 0.3, value=0.0):
        if not 0 <= p <= 1:
            raise ValueError(f"erasing probability must be in [0, 1], got {p}")
        self.p, self.sl, self.sh, self.r1, self.value = p, sl, sh, r1, value

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.p == 0 or random.random() >= self.p:
            return img
        _, height, width = img.shape
        for _ in range(100):  # retry until the rectangle fits inside the image
            area = random.uniform(self.sl, self.sh) * height * width
            aspect = math.exp(random.uniform(math.log(self.r1), -math.log(self.r1)))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if 0 < h < height and 0 < w < width:
                top = random.randint(0, height - h)
                left = random.randint(0, width - w)
                img = img.clone()
                img[:, top : top + h, left : left + w] = self.value
                return img
        return img

    def __repr__(self) -> str:
        return f"RandomErasing(p={self.p}, sl={self.sl}, sh={self.sh}, r1={self.r1}, value={self.value})"
