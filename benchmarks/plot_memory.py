#!/usr/bin/env python3
"""Peak device memory against seconds per forward for every weight mode of memory_bench.cpp (ltxmps) and
memory_bench.py (diffusers), from their JSON lines, as one PNG.

    python3 benchmarks/plot_memory.py memory_bench.jsonl [more.jsonl ...] --out memory.png

Uses matplotlib when it is installed; otherwise draws the same scatter plot with the small PNG writer below (zlib
and a 3x5 pixel font, no dependencies). Lines that are not JSON objects with a mode, median_s and peak_gib are
skipped, so a log with other output mixed in can be passed as it is.
"""

import argparse
import struct
import sys
import zlib

from bench_ratios import read_lines  # benchmarks/ is on sys.path when run as a script

COLORS = {"ltxmps": (31, 119, 180), "diffusers": (255, 127, 14)}


def read_points(files):
    points = []
    for r in read_lines(files):
        if r.get("mode") and r.get("median_s") is not None and r.get("peak_gib") is not None:
            points.append((r.get("impl", "?"), r["mode"], float(r["median_s"]), float(r["peak_gib"])))
    return points


def plot_matplotlib(points, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for impl in sorted({p[0] for p in points}):
        mine = [p for p in points if p[0] == impl]
        ax.scatter([p[2] for p in mine], [p[3] for p in mine], label=impl, s=60,
                   color=[c / 255 for c in COLORS.get(impl, (80, 80, 80))], marker="s" if impl == "ltxmps" else "o")
        for _, mode, x, y in mine:
            ax.annotate(mode, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("seconds per forward")
    ax.set_ylabel("peak device memory (GiB)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("transformer forward: peak memory vs time per weight mode")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


# A 3x5 pixel font: five rows of three bits per glyph.
FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111", "a": "010101111101101", "b": "110101110101110",
    "c": "011100100100011", "d": "110101101101110", "e": "111100110100111", "f": "111100110100100",
    "g": "011100101101011", "h": "101101111101101", "i": "111010010010111", "j": "001001001101010",
    "k": "101101110101101", "l": "100100100100111", "m": "101111111101101", "n": "110101101101101",
    "o": "010101101101010", "p": "110101110100100", "q": "010101101110011", "r": "110101110101101",
    "s": "011100010001110", "t": "111010010010010", "u": "101101101101111", "v": "101101101101010",
    "w": "101101111111101", "x": "101101010101101", "y": "101101010010010", "z": "111001010100111",
    ".": "000000000000010", "_": "000000000000111", "+": "000010111010000", "-": "000000111000000",
    "/": "001001010100100", "(": "010100100100010", ")": "010001001001010", ":": "000010000010000",
    " ": "000000000000000",
}


class Canvas:
    def __init__(self, width, height):
        self.w, self.h = width, height
        self.px = bytearray(b"\xff" * (width * height * 3))

    def dot(self, x, y, color):
        if 0 <= x < self.w and 0 <= y < self.h:
            i = (y * self.w + x) * 3
            self.px[i:i + 3] = bytes(color)

    def rect(self, x0, y0, x1, y1, color):
        for y in range(min(y0, y1), max(y0, y1) + 1):
            for x in range(min(x0, x1), max(x0, x1) + 1):
                self.dot(x, y, color)

    def text(self, x, y, s, color=(0, 0, 0), scale=2):
        for ch in s.lower():
            glyph = FONT.get(ch, FONT[" "])
            for row in range(5):
                for col in range(3):
                    if glyph[row * 3 + col] == "1":
                        self.rect(x + col * scale, y + row * scale, x + col * scale + scale - 1,
                                  y + row * scale + scale - 1, color)
            x += 4 * scale

    def save(self, path):
        raw = b"".join(b"\x00" + bytes(self.px[y * self.w * 3:(y + 1) * self.w * 3]) for y in range(self.h))

        def chunk(kind, data):
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        with open(path, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)) +
                    chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def plot_png(points, out):
    c = Canvas(900, 560)
    left, right, top, bottom = 80, 860, 50, 490
    xmax = max(p[2] for p in points) * 1.2 or 1.0
    ymax = max(p[3] for p in points) * 1.15 or 1.0
    to_x = lambda v: int(left + v / xmax * (right - left))  # noqa: E731
    to_y = lambda v: int(bottom - v / ymax * (bottom - top))  # noqa: E731
    for i in range(6):
        gx, gy = left + i * (right - left) // 5, bottom - i * (bottom - top) // 5
        c.rect(gx, top, gx, bottom, (225, 225, 225))
        c.rect(left, gy, right, gy, (225, 225, 225))
        c.text(gx - 12, bottom + 8, f"{xmax * i / 5:.2f}")
        c.text(left - 60, gy - 5, f"{ymax * i / 5:.1f}")
    c.rect(left, top, left, bottom, (0, 0, 0))
    c.rect(left, bottom, right, bottom, (0, 0, 0))
    c.text(left, 14, "peak device memory (gib) vs seconds per forward", scale=3)
    c.text((left + right) // 2 - 80, bottom + 34, "seconds per forward")
    for n, impl in enumerate(sorted({p[0] for p in points})):
        color = COLORS.get(impl, (80, 80, 80))
        c.rect(right - 150, top + 10 + 22 * n, right - 140, top + 20 + 22 * n, color)
        c.text(right - 130, top + 11 + 22 * n, impl)
    for impl, mode, x, y in points:
        px, py = to_x(x), to_y(y)
        c.rect(px - 5, py - 5, px + 5, py + 5, COLORS.get(impl, (80, 80, 80)))
        c.text(px + 9, py - 12, mode)
    c.save(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="JSON lines of memory_bench.cpp / memory_bench.py")
    p.add_argument("--out", default="memory.png")
    args = p.parse_args()
    points = read_points(args.files)
    if not points:
        sys.exit("plot_memory: no benchmark line with mode, median_s and peak_gib in " + ", ".join(args.files))
    for impl, mode, x, y in points:
        print(f"{impl:10s} {mode:14s} {x:8.3f} s/forward {y:8.2f} GiB peak")
    try:
        import matplotlib  # noqa: F401

        plot_matplotlib(points, args.out)
        how = "matplotlib"
    except ImportError:
        plot_png(points, args.out)
        how = "the built-in PNG writer (no matplotlib)"
    print(f"plot_memory: wrote {args.out} with {how}")


if __name__ == "__main__":
    main()
