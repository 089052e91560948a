"""Procedural street scenes for the toy domain pair: one scene layout, two looks.

``draw_scene`` lays out a street in perspective (sky, buildings with windows, trees, walls and
fences along the kerb, sidewalks, the road with lane marks, poles carrying traffic signs or lights,
cars on the road, people on the sidewalks) and paints it twice at once: an RGB image and a map of
Cityscapes label ids. The *style* decides the look. ``SOURCE`` is a game engine's: flat, saturated
colours and clean edges. ``TARGET`` is a camera's: another palette, surface textures, uneven
lighting and colour casts, sensor noise, blur, and the ego vehicle's bonnet at the bottom (labelled
"ego vehicle", ignored in evaluation, as in Cityscapes). The layouts are drawn from the same
distribution, so what separates the domains is appearance, the gap adaptation has to close.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from rtda.data.labels import LABEL_ID

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Style:
    name: str
    palette: dict[str, RGB]
    jitter: int  # per-object colour jitter (+-)
    saturation: float  # random object colours (cars, clothes): 1 = fully saturated
    texture: float = 0.0  # amplitude of multiplicative surface texture
    lighting: float = 0.0  # amplitude of the brightness gradient and colour cast
    noise: float = 0.0  # sensor noise standard deviation (0..255 scale)
    blur: tuple[float, float] = (0.0, 0.0)  # Gaussian blur radius range
    ego_vehicle: bool = False
    lamp_colors: tuple[RGB, ...] = field(default=((255, 40, 40), (255, 200, 0), (40, 230, 60)))


SOURCE = Style("source", jitter=20, saturation=1.0, palette={
    "sky": (110, 180, 250), "building": (190, 120, 80), "window": (80, 160, 220),
    "wall": (225, 205, 120), "fence": (150, 105, 60), "vegetation": (40, 175, 50),
    "trunk": (120, 80, 40), "road": (90, 90, 105), "lane": (250, 250, 250),
    "sidewalk": (210, 175, 150), "pole": (70, 70, 80), "sign": (30, 90, 230),
    "light": (30, 30, 30), "skin": (230, 180, 140), "tyre": (20, 20, 20), "glass": (120, 200, 240),
    "ego": (0, 0, 0)})

TARGET = Style("target", jitter=28, saturation=0.7, texture=0.18, lighting=0.3, noise=5.0,
               blur=(0.5, 1.3), ego_vehicle=True, palette={
    "sky": (142, 188, 232), "building": (170, 122, 95), "window": (70, 112, 145),
    "wall": (195, 172, 120), "fence": (132, 115, 82), "vegetation": (58, 145, 52),
    "trunk": (100, 75, 50), "road": (102, 100, 108), "lane": (225, 225, 218),
    "sidewalk": (188, 162, 150), "pole": (98, 98, 100), "sign": (40, 90, 200),
    "light": (52, 52, 48), "skin": (215, 170, 135), "tyre": (28, 28, 28), "glass": (85, 130, 155),
    "ego": (20, 22, 25)})

STYLES = {"source": SOURCE, "target": TARGET}

# Which texture (of the bank) and how strongly each label id is textured in the target style.
_TEXTURED = {"road": (0, 1.0), "sidewalk": (1, 0.9), "building": (2, 1.0), "wall": (3, 0.8),
             "vegetation": (4, 1.4), "sky": (5, 0.25), "fence": (3, 0.6), "car": (1, 0.3),
             "person": (2, 0.4)}


class Painter:
    """Draws every shape on the RGB canvas and, with its label id, on the label canvas."""

    def __init__(self, size: tuple[int, int], style: Style, rng: np.random.Generator) -> None:
        height, width = size
        self.height, self.width, self.style, self.rng = height, width, style, rng
        self.image = Image.new("RGB", (width, height))
        self.label = Image.new("L", (width, height))
        self._rgb = ImageDraw.Draw(self.image)
        self._ids = ImageDraw.Draw(self.label)

    def color(self, key: str) -> RGB:
        base = np.asarray(self.style.palette[key], dtype=np.int64)
        jitter = self.rng.integers(-self.style.jitter, self.style.jitter + 1, size=3)
        return tuple(int(v) for v in np.clip(base + jitter, 0, 255))

    def random_color(self) -> RGB:
        """A random object colour (a car's paint, a shirt), as saturated as the style says."""
        hue = self.rng.random()
        value = self.rng.uniform(0.35, 0.95)
        sat = self.style.saturation * self.rng.uniform(0.5, 1.0)
        rgb = np.array([abs((hue * 6 + shift) % 6 - 3) - 1 for shift in (0, 4, 2)]).clip(0, 1)
        rgb = value * (1 - sat + sat * rgb)
        return tuple(int(v) for v in (rgb * 255).round())

    def polygon(self, points, cls: str, color: RGB) -> None:
        points = [(float(x), float(y)) for x, y in points]
        self._rgb.polygon(points, fill=color)
        self._ids.polygon(points, fill=LABEL_ID[cls])

    def rect(self, box, cls: str, color: RGB) -> None:
        x0, y0, x1, y1 = box
        self.polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], cls, color)

    def ellipse(self, box, cls: str, color: RGB) -> None:
        box = [float(v) for v in box]
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            return
        self._rgb.ellipse(box, fill=color)
        self._ids.ellipse(box, fill=LABEL_ID[cls])


@dataclass
class Street:
    """The perspective frame: horizon row, vanishing column, road and facade lines."""

    height: int
    width: int
    horizon: float
    vanish_x: float
    road_half: float  # half width of the road at the bottom row
    facade_drop: float  # how far the facade's ground line falls per unit of distance from vanish_x

    def depth(self, y: float) -> float:
        """0 at the horizon, 1 at the bottom row."""
        return max(0.0, (y - self.horizon) / (self.height - self.horizon))

    def road_edges(self, y: float) -> tuple[float, float]:
        half = 2 + self.road_half * self.depth(y)
        return self.vanish_x - half, self.vanish_x + half

    def facade_bottom(self, x: float) -> float:
        return self.horizon + self.facade_drop * abs(x - self.vanish_x)


def _draw_ground(p: Painter, s: Street) -> None:
    w, h = s.width, s.height
    p.rect((0, 0, w, h), "sky", p.color("sky"))
    p.polygon([(0, s.facade_bottom(0)), (s.vanish_x, s.horizon), (w, s.facade_bottom(w)), (w, h),
               (0, h)], "sidewalk", p.color("sidewalk"))
    left, right = s.road_edges(h)
    p.polygon([(s.vanish_x - 2, s.horizon), (s.vanish_x + 2, s.horizon), (right, h), (left, h)],
              "road", p.color("road"))
    lane = p.color("lane")
    y = s.horizon + 3
    while y < h:  # dashed centre line, dashes growing with depth
        dash = 4 + 30 * s.depth(y)
        y1 = min(h, y + dash)
        half0, half1 = 0.5 + 3 * s.depth(y), 0.5 + 3 * s.depth(y1)
        p.polygon([(s.vanish_x - half0, y), (s.vanish_x + half0, y), (s.vanish_x + half1, y1),
                   (s.vanish_x - half1, y1)], "road", lane)
        y = y1 + dash


def _draw_buildings(p: Painter, s: Street) -> None:
    for side in (-1, 1):
        end = s.vanish_x + side * s.width * p.rng.uniform(0.03, 0.12)
        edge = 0.0 if side < 0 else float(s.width)
        x, step = edge, -side  # walk from the image edge towards the vanishing point
        while (end - x) * step > 0:
            x1 = x + step * s.width * p.rng.uniform(0.08, 0.25)
            if (x1 - end) * step > 0:
                x1 = end
            rise = p.rng.uniform(0.6, 2.2)  # building height, in units of its distance
            top0 = s.horizon - rise * abs(x - s.vanish_x) * 0.8 - 4
            top1 = s.horizon - rise * abs(x1 - s.vanish_x) * 0.8 - 4
            bottom0, bottom1 = s.facade_bottom(x), s.facade_bottom(x1)
            p.polygon([(x, top0), (x1, top1), (x1, bottom1), (x, bottom0)], "building",
                      p.color("building"))
            _draw_windows(p, x, x1, top0, top1, bottom0, bottom1)
            x = x1


def _draw_windows(p: Painter, x0, x1, top0, top1, bottom0, bottom1) -> None:
    window = p.color("window")
    columns = max(1, int(abs(x1 - x0) / 14))
    rows = max(1, int(abs(bottom0 - top0) / 18))
    for i in range(columns):
        for j in range(rows):
            if p.rng.random() < 0.15:
                continue
            u0, u1 = (i + 0.25) / columns, (i + 0.75) / columns
            v0, v1 = (j + 0.2) / rows, (j + 0.6) / rows
            corners = []
            for u, v in ((u0, v0), (u1, v0), (u1, v1), (u0, v1)):
                top = top0 + (top1 - top0) * u
                bottom = bottom0 + (bottom1 - bottom0) * u
                corners.append((x0 + (x1 - x0) * u, top + (bottom - top) * v * 0.85))
            p.polygon(corners, "building", window)


def _draw_kerbside(p: Painter, s: Street) -> None:
    """Walls, fences and trees standing on the facade line."""
    for _ in range(p.rng.integers(1, 4)):
        side = p.rng.choice((-1, 1))
        d0, d1 = sorted(p.rng.uniform(0.05, 0.6, size=2) * s.width)
        x0, x1 = s.vanish_x + side * d1, s.vanish_x + side * d0
        kind = p.rng.choice(("wall", "fence", "tree", "tree"))
        if kind == "tree":
            x = x0
            dist = abs(x - s.vanish_x)
            base = s.facade_bottom(x)
            tall = dist * p.rng.uniform(0.6, 1.0)
            trunk = dist * 0.03 + 1
            p.rect((x - trunk, base - tall * 0.5, x + trunk, base), "vegetation", p.color("trunk"))
            radius = tall * p.rng.uniform(0.3, 0.45)
            for _ in range(3):
                cx = x + p.rng.uniform(-0.4, 0.4) * radius
                cy = base - tall * 0.6 + p.rng.uniform(-0.3, 0.3) * radius
                p.ellipse((cx - radius, cy - radius * 0.8, cx + radius, cy + radius * 0.8),
                          "vegetation", p.color("vegetation"))
            continue
        height = p.rng.uniform(0.08, 0.2)
        tops = [s.facade_bottom(x) - height * abs(x - s.vanish_x) for x in (x0, x1)]
        if kind == "wall":
            p.polygon([(x0, tops[0]), (x1, tops[1]), (x1, s.facade_bottom(x1)),
                       (x0, s.facade_bottom(x0))], "wall", p.color("wall"))
            continue
        color = p.color("fence")
        bars = max(2, int(abs(x1 - x0) / 6))
        for i in range(bars + 1):
            x = x0 + (x1 - x0) * i / bars
            w = max(1.0, abs(x - s.vanish_x) * 0.01)
            top = s.facade_bottom(x) - height * abs(x - s.vanish_x)
            p.rect((x - w, top, x + w, s.facade_bottom(x)), "fence", color)
        for frac in (0.1, 0.8):
            p.polygon([(x0, tops[0] + frac * (s.facade_bottom(x0) - tops[0])),
                       (x1, tops[1] + frac * (s.facade_bottom(x1) - tops[1])),
                       (x1, tops[1] + (frac + 0.08) * (s.facade_bottom(x1) - tops[1])),
                       (x0, tops[0] + (frac + 0.08) * (s.facade_bottom(x0) - tops[0]))],
                      "fence", color)


def _draw_pole(p: Painter, s: Street, y: float) -> None:
    side = p.rng.choice((-1, 1))
    left, right = s.road_edges(y)
    scale = s.depth(y) * s.height
    x = (left if side < 0 else right) + side * scale * p.rng.uniform(0.05, 0.25)
    tall, w = scale * p.rng.uniform(1.2, 1.7), max(1.0, scale * 0.025)
    p.rect((x - w, y - tall, x + w, y), "pole", p.color("pole"))
    if p.rng.random() < 0.6:
        r = scale * p.rng.uniform(0.09, 0.14)
        cy = y - tall + r
        if p.rng.random() < 0.5:
            p.ellipse((x - r, cy - r, x + r, cy + r), "traffic sign", p.color("sign"))
        else:
            p.rect((x - r, cy - r, x + r, cy + r * 0.6), "traffic sign", p.color("sign"))
    else:
        bw, bh = scale * 0.06 + 1, scale * 0.18 + 2
        top = y - tall
        p.rect((x - bw, top, x + bw, top + bh), "traffic light", p.color("light"))
        lamp = p.style.lamp_colors[int(p.rng.integers(0, 3))]
        p.ellipse((x - bw * 0.6, top + bh * 0.1, x + bw * 0.6, top + bh * 0.1 + bw * 1.2),
                  "traffic light", lamp)


def _draw_car(p: Painter, s: Street, y: float) -> None:
    left, right = s.road_edges(y)
    scale = s.depth(y) * s.height
    length = scale * p.rng.uniform(0.55, 0.8)
    x = p.rng.uniform(left + length * 0.3, max(left + length * 0.31, right - length * 0.3))
    body_h, paint = length * 0.32, p.random_color()
    x0, x1 = x - length / 2, x + length / 2
    p.rect((x0, y - body_h, x1, y - body_h * 0.25), "car", paint)
    p.polygon([(x0 + length * 0.18, y - body_h), (x0 + length * 0.3, y - body_h * 1.9),
               (x1 - length * 0.25, y - body_h * 1.9), (x1 - length * 0.12, y - body_h)],
              "car", paint)
    p.polygon([(x0 + length * 0.24, y - body_h * 1.05), (x0 + length * 0.33, y - body_h * 1.75),
               (x1 - length * 0.28, y - body_h * 1.75), (x1 - length * 0.18, y - body_h * 1.05)],
              "car", p.color("glass"))
    for cx in (x0 + length * 0.2, x1 - length * 0.2):
        r = body_h * 0.4
        p.ellipse((cx - r, y - 2 * r, cx + r, y), "car", p.color("tyre"))


def _draw_person(p: Painter, s: Street, y: float) -> None:
    left, right = s.road_edges(y)
    side = p.rng.choice((-1, 1))
    scale = s.depth(y) * s.height
    x = (left if side < 0 else right) + side * scale * p.rng.uniform(0.15, 0.6)
    tall = scale * p.rng.uniform(0.6, 0.8)
    w = tall * 0.14
    shirt, trousers = p.random_color(), p.random_color()
    p.rect((x - w * 0.9, y - tall * 0.5, x - w * 0.1, y), "person", trousers)
    p.rect((x + w * 0.1, y - tall * 0.5, x + w * 0.9, y), "person", trousers)
    p.rect((x - w, y - tall * 0.85, x + w, y - tall * 0.48), "person", shirt)
    head = tall * 0.08
    p.ellipse((x - head, y - tall, x + head, y - tall + 2 * head), "person", p.color("skin"))


def _draw_ego_vehicle(p: Painter) -> None:
    h, w = p.height, p.width
    top = h * p.rng.uniform(0.9, 0.94)
    p.polygon([(0, h), (0, top + 0.04 * h), (w * 0.25, top), (w * 0.75, top),
               (w, top + 0.04 * h), (w, h)], "ego vehicle", p.color("ego"))


def _value_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    h, w = size
    coarse = rng.standard_normal((max(2, h * cells // w), cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.Resampling.BICUBIC))


def _finish(p: Painter, label_ids: np.ndarray) -> np.ndarray:
    """The style's camera: textures, lighting, noise, blur."""
    style, rng = p.style, p.rng
    rgb = np.asarray(p.image, dtype=np.float32)
    h, w = label_ids.shape
    if style.texture:
        bank = [sum(_value_noise(rng, (h, w), c) / k for k, c in ((1, 8), (2, 32), (4, 128)))
                for _ in range(6)]
        gain = np.zeros((h, w), dtype=np.float32)
        for cls, (tex, amp) in _TEXTURED.items():
            mask = label_ids == LABEL_ID[cls]
            gain[mask] = bank[tex][mask] * amp
        rgb *= (1 + style.texture * np.clip(gain, -2, 2))[..., None]
    if style.lighting:
        gradient = _value_noise(rng, (h, w), 3)
        cast = 1 + style.lighting * rng.uniform(-0.25, 0.25, size=3)
        level = 1 + style.lighting * rng.uniform(-0.8, 0.3)
        rgb *= (level * (1 + 0.3 * style.lighting * gradient))[..., None] * cast
    if style.noise:
        rgb += rng.normal(0, style.noise, size=rgb.shape).astype(np.float32)
    out = Image.fromarray(np.clip(rgb, 0, 255).round().astype(np.uint8))
    if style.blur[1] > 0:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(*style.blur)))
    return np.asarray(out)


def draw_scene(rng: np.random.Generator, size: tuple[int, int],
               style: Style) -> tuple[np.ndarray, np.ndarray]:
    """One street scene: (HxWx3 uint8 RGB image, HxW uint8 Cityscapes label ids)."""
    height, width = size
    p = Painter(size, style, rng)
    horizon = height * rng.uniform(0.38, 0.5)
    street = Street(height, width, horizon, vanish_x=width * rng.uniform(0.35, 0.65),
                    road_half=width * rng.uniform(0.3, 0.45),
                    facade_drop=(height - horizon) / width * rng.uniform(0.8, 1.4))
    _draw_ground(p, street)
    _draw_buildings(p, street)
    _draw_kerbside(p, street)
    objects = ([(y, _draw_pole) for y in rng.uniform(0.15, 1.0, rng.integers(1, 4))]
               + [(y, _draw_car) for y in rng.uniform(0.1, 1.05, rng.integers(1, 5))]
               + [(y, _draw_person) for y in rng.uniform(0.2, 1.0, rng.integers(1, 5))])
    for depth, draw in sorted(objects, key=lambda item: item[0]):  # far to near
        draw(p, street, street.horizon + depth * (height - street.horizon))
    if style.ego_vehicle:
        _draw_ego_vehicle(p)
    label_ids = np.asarray(p.label, dtype=np.uint8).copy()
    return _finish(p, label_ids), label_ids
