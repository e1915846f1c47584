"""Small line charts as PNG (PIL only, no plotting library): the study's accuracy against labels
per class or pre-training steps, and the comparison's validation curves per data set.

A line is ``(colour, dash, points)``: ``dash`` 0 solid, 1 dashed, 2 dotted; ``points`` are
``(x index, value, std)`` over evenly spaced x labels, values in [0, 1], the std drawn as a bar.
A panel is ``(x labels, lines, caption, legend)`` with ``legend`` = [(text, colour)].
"""
from __future__ import annotations

PAD = 44


def line_plot(path: str, xlabels: list, lines: list, caption: str, legend: list,
              size=(520, 320)):
    """One panel as a PNG."""
    panels_plot(path, [(xlabels, lines, caption, legend)], size)


def panels_plot(path: str, panels: list, size=(520, 320)):
    """Panels side by side, each ``size``, as one PNG."""
    from PIL import Image, ImageDraw
    w, h = size
    img = Image.new("RGB", (w * max(1, len(panels)), h), "white")
    d = ImageDraw.Draw(img)
    for i, panel in enumerate(panels):
        _panel(d, i * w, size, *panel)
    img.save(path)


def _panel(d, x0: int, size, xlabels: list, lines: list, caption: str, legend: list):
    w, h = size
    d.rectangle([x0 + PAD, 10, x0 + w - 10, h - PAD], outline=(0, 0, 0))
    x = lambda i: x0 + PAD + (w - PAD - 10) * (i + 0.5) / max(1, len(xlabels))  # noqa: E731
    y = lambda v: 10 + (h - PAD - 10) * (1 - min(max(v, 0.0), 1.0))  # noqa: E731
    every = max(1, len(xlabels) // 12)          # at most ~12 x labels
    for i, label in enumerate(xlabels):
        if i % every == 0:
            d.text((x(i) - 8, h - PAD + 4), str(label), fill=(0, 0, 0))
    d.text((x0 + PAD, h - PAD + 18), caption, fill=(0, 0, 0))
    for v in (0.25, 0.5, 0.75, 1.0):
        d.text((x0 + 4, y(v) - 6), f"{v:.2f}", fill=(0, 0, 0))
    for colour, dash, pts in lines:
        xy = [(x(i), y(m)) for i, m, _ in pts]
        for a, b in zip(xy, xy[1:]):
            _segment(d, a, b, colour, dash)
        for (px, py), (_, _, sd) in zip(xy, pts):
            sd *= h - PAD - 10
            if sd:
                d.line([(px, py - sd), (px, py + sd)], fill=colour)
            d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
    for j, (text, colour) in enumerate(legend):
        d.text((x0 + PAD + 6, 14 + 14 * j), text, fill=colour)


def _segment(d, a, b, colour, dash: int):
    if dash == 0:
        d.line([a, b], fill=colour, width=2)
        return
    n = 24
    for i in range(n):
        if (i % 2) if dash == 1 else (i % 3):
            continue
        p = (a[0] + (b[0] - a[0]) * i / n, a[1] + (b[1] - a[1]) * i / n)
        q = (a[0] + (b[0] - a[0]) * (i + 1) / n, a[1] + (b[1] - a[1]) * (i + 1) / n)
        d.line([p, q], fill=colour, width=2)


def link_tb(run_dir: str, where: str):
    """One TensorBoard folder for many runs: ``where`` links to ``run_dir/tb``."""
    import os
    os.makedirs(os.path.dirname(where), exist_ok=True)
    if not os.path.lexists(where):
        os.symlink(os.path.abspath(os.path.join(run_dir, "tb")), where)
