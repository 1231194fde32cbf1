"""Draw the book's diagrams: `.venv/bin/python book/figures/make_figures.py [--png] [OUT_DIR]`.

Writes one SVG per figure (the file the book shows) into book/figures/, or into OUT_DIR;
`--png` also writes a PNG of each, for a quick look (not committed). The output is deterministic: the SVG ids come from a fixed
hash salt, no date is stored, and every text uses the DejaVu fonts that ship with
matplotlib. tests/test_figures.py re-draws them and compares.

One colour per retrieval mode, in every figure:
dense = blue, lexical = amber, multi-vector = green, their ensemble s_inter = purple.
Symbols follow book/notation.md: w_{q_t} is a term weight, w_1, w_2, w_3 are the hybrid
weights, lambda_1..3 weigh the losses.
"""
from __future__ import annotations

import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

DENSE, LEX, MUL, INTER = "#2563eb", "#c2410c", "#047857", "#7c3aed"
INK, GREY, PALE = "#1f2937", "#6b7280", "#f3f4f6"
LIGHT = {DENSE: "#dbeafe", LEX: "#ffedd5", MUL: "#d1fae5", INTER: "#ede9fe", GREY: PALE, INK: PALE}

STYLE = {
    "font.family": "DejaVu Sans",
    "mathtext.fontset": "dejavusans",
    "font.size": 13,
    "svg.hashsalt": "m3ref-book-figures",
    "svg.fonttype": "path",  # glyphs as paths: the same picture in every browser
    "figure.dpi": 100,
}

# name -> (drawing function, figure size in inches); filled in by @figure below
FIGURES: dict = {}


def figure(name, size):
    def register(draw):
        FIGURES[name] = (draw, size)
        return draw
    return register


# ---------------------------------------------------------------- drawing helpers

def canvas(size):
    fig = plt.figure(figsize=size)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, size[0])
    ax.set_ylim(0, size[1])
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def box(ax, cx, cy, w, h, text, color=INK, fill=None, size=13, weight="normal", ls="-",
        text_color=None, lw=1.6, z=3, align="center"):
    """A rounded box centred at (cx, cy) with centred text."""
    fill = LIGHT.get(color, PALE) if fill is None else fill
    ax.add_patch(FancyBboxPatch((cx - w / 2, cy - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.12",
                                linewidth=lw, edgecolor=color, facecolor=fill, linestyle=ls, zorder=z))
    if text:
        x = cx if align == "center" else cx - w / 2 + 0.15
        ax.text(x, cy, text, ha=align, va="center", fontsize=size, color=text_color or INK,
                fontweight=weight, zorder=z + 1, linespacing=1.35)


def arrow(ax, start, end, color=INK, lw=1.6, ls="-", rad=0.0, z=2, head=12):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=head, color=color,
                                 linewidth=lw, linestyle=ls, shrinkA=0, shrinkB=0, zorder=z,
                                 connectionstyle=f"arc3,rad={rad}"))


def line(ax, xs, ys, color=INK, lw=1.6, ls="-", z=2):
    ax.plot(xs, ys, color=color, linewidth=lw, linestyle=ls, zorder=z, solid_capstyle="butt")


def label(ax, x, y, text, size=12, color=GREY, ha="center", va="center", weight="normal", style="normal"):
    ax.text(x, y, text, ha=ha, va=va, fontsize=size, color=color, fontweight=weight, style=style, zorder=5)


def cells(ax, x, y, n, w, h, color, values=None):
    """A row of n small cells (a vector), lower-left corner at (x, y)."""
    for i in range(n):
        shade = 0.35 + 0.65 * (values[i] if values else (0.5 + 0.5 * ((i * 7) % 5) / 4))
        ax.add_patch(Rectangle((x + i * w, y), w, h, facecolor=color, alpha=shade * 0.55,
                               edgecolor=color, linewidth=0.8, zorder=3))


# ---------------------------------------------------------------- figure 1: three heads

@figure("m3_three_heads", (11.0, 8.6))
def three_heads(ax):
    tokens = ["[CLS]", "why", "is", "Mars", "red", "</s>"]
    xs = [2.2 + 1.35 * i for i in range(len(tokens))]  # token centres
    # input tokens
    for x, t in zip(xs, tokens):
        box(ax, x, 0.55, 1.15, 0.55, t, color=DENSE if t == "[CLS]" else GREY, size=12)
    label(ax, 0.75, 0.55, "query $q$", size=12, color=INK)
    # encoder
    box(ax, (xs[0] + xs[-1]) / 2, 1.75, xs[-1] - xs[0] + 1.5, 1.0,
        "one XLM-RoBERTa encoder\n(the same weights for queries and passages)", color=GREY, fill=PALE, size=13)
    for x in xs:
        arrow(ax, (x, 0.83), (x, 1.25), color=GREY, lw=1.2, head=9)
        arrow(ax, (x, 2.25), (x, 2.72), color=GREY, lw=1.2, head=9)
    # hidden states
    for i, x in enumerate(xs):
        box(ax, x, 3.0, 1.15, 0.55, f"$\\mathbf{{H}}_q[{i}]$", color=DENSE if i == 0 else INK,
            fill="white", size=12)
    label(ax, 0.75, 3.0, "last hidden\nstates", size=12, color=INK)

    # the three heads
    yh = 4.65
    box(ax, 1.7, yh, 2.9, 1.05, "dense\n$e_q=\\mathrm{norm}(\\mathbf{H}_q[0])$", color=DENSE, size=13)
    box(ax, 5.6, yh, 3.5, 1.05, "lexical, every token $t$\n$w_{q_t}=\\mathrm{ReLU}(\\mathbf{W}_{lex}^{\\top}\\mathbf{H}_q[i])$",
        color=LEX, size=13)
    box(ax, 9.35, yh, 3.1, 1.05, "multi-vector\n$E_q=\\mathrm{norm}(\\mathbf{W}_{mul}^{\\top}\\mathbf{H}_q[1{:}])$",
        color=MUL, size=13)
    # wiring: [CLS] -> dense; all tokens -> lexical; tokens after [CLS] -> multi-vector
    arrow(ax, (xs[0] - 0.15, 3.28), (1.7, yh - 0.53), color=DENSE)
    line(ax, [xs[0], xs[-1]], [3.5, 3.5], color=LEX)
    for x in xs:
        line(ax, [x, x], [3.28, 3.5], color=LEX, lw=1.2)
    arrow(ax, (5.6, 3.5), (5.6, yh - 0.53), color=LEX)
    line(ax, [xs[1] + 0.3, 5.48], [3.72, 3.72], color=MUL)  # a gap where the lexical arrow crosses
    line(ax, [5.72, 9.35], [3.72, 3.72], color=MUL)
    for x in xs[1:]:
        line(ax, [x + 0.3, x + 0.3], [3.28, 3.72], color=MUL, lw=1.2)
    arrow(ax, (9.35, 3.72), (9.35, yh - 0.53), color=MUL)

    # what each head gives
    yr = 6.05
    cells(ax, 0.9, yr - 0.18, 8, 0.2, 0.36, DENSE)
    label(ax, 1.7, yr + 0.42, "one vector per text", size=11.5)
    for i, (t, v) in enumerate(zip(["why", "is", "Mars", "red"], [0.25, 0.1, 0.9, 0.7])):
        x0 = 4.35 + 0.68 * i
        ax.add_patch(Rectangle((x0, yr - 0.3), 0.42, 0.62 * v + 0.04, facecolor=LEX, alpha=0.75,
                               edgecolor=LEX, zorder=3))
        label(ax, x0 + 0.21, yr - 0.48, t, size=10, color=INK)
    label(ax, 5.6, yr + 0.55, "one weight per token", size=11.5)
    for r in range(5):
        cells(ax, 8.55, yr - 0.42 + 0.17 * r, 8, 0.2, 0.15, MUL)
    label(ax, 9.35, yr + 0.55, "one vector per token", size=11.5)
    for x in (1.7, 5.6, 9.35):
        arrow(ax, (x, yh + 0.53), (x, yr - 0.62 if x != 1.7 else yr - 0.25), color=GREY, lw=1.2, head=9)

    # scores
    ys = 7.15
    box(ax, 1.7, ys, 2.9, 0.62, "$s_{dense}=\\langle e_q, e_p\\rangle$", color=DENSE, size=13)
    box(ax, 5.6, ys, 3.5, 0.62, "$s_{lex}=\\sum_{t\\in q\\cap p} w_{q_t}\\,w_{p_t}$", color=LEX, size=13)
    box(ax, 9.35, ys, 3.1, 0.62, "$s_{mul}=\\frac{1}{N_q}\\sum_{i}\\max_{j} E_q[i]\\cdot E_p[j]$", color=MUL, size=13)
    for x, c in ((1.7, DENSE), (5.6, LEX), (9.35, MUL)):
        arrow(ax, (x, yr + 0.75), (x, ys - 0.31), color=c, lw=1.4, head=10)
    # ensemble
    ye = 8.17
    box(ax, 5.6, ye, 6.2, 0.62, "$s_{inter}=w_1\\,s_{dense}+w_2\\,s_{lex}+w_3\\,s_{mul}$",
        color=INTER, size=13.5, weight="bold")
    arrow(ax, (1.7, ys + 0.31), (2.7, ye - 0.31), color=DENSE, lw=1.4, head=10)
    arrow(ax, (5.6, ys + 0.31), (5.6, ye - 0.31), color=LEX, lw=1.4, head=10)
    arrow(ax, (9.35, ys + 0.31), (8.5, ye - 0.31), color=MUL, lw=1.4, head=10)


# ---------------------------------------------------------------- figure 2: self-distillation

@figure("m3_self_distillation", (13.6, 8.6))
def self_distillation(ax):
    xl, xm, xr = 2.55, 6.65, 10.75  # column centres: InfoNCE | scores | distillation
    rows = [(7.0, DENSE, "dense"), (5.95, LEX, "lex"), (4.9, MUL, "mul")]
    yi = 3.6  # the ensemble row
    label(ax, xl, 8.15, "contrastive loss\nlabel: the positive $p^+$", size=12.5, color=INK, weight="bold")
    label(ax, xm, 8.15, "scores of $q$ against $p^+$ and\nits negatives, divided by $\\tau$",
          size=12.5, color=INK, weight="bold")
    label(ax, xr, 8.15, "self-distillation\nlabel: the ensemble's softmax", size=12.5, color=INK, weight="bold")
    # backgrounds: the three scores form s_inter; the L column sums to L; the L' column to L'
    for x0, y0, w, h, c in ((xm - 1.55, 4.38, 3.1, 3.15, LIGHT[INTER]), (xl - 1.7, 3.08, 3.4, 4.45, PALE),
                            (xr - 2.0, 4.38, 4.0, 3.15, PALE)):
        ax.add_patch(FancyBboxPatch((x0, y0), w, h, boxstyle="round,pad=0,rounding_size=0.15",
                                    facecolor=c, edgecolor="none", zorder=1))
    for y, c, m in rows:
        box(ax, xm, y, 2.6, 0.72, f"$s_{{{m}}}$", color=c, size=14)
        box(ax, xl, y, 2.9, 0.72, f"$\\mathcal{{L}}_{{{m}}}$  InfoNCE", color=c, size=13)
        box(ax, xr, y, 3.7, 0.72, f"$\\mathcal{{L}}'_{{{m}}}=-p(s_{{inter}})\\cdot\\log p(s_{{{m}}})$", color=c, size=12.5)
        arrow(ax, (xm - 1.3, y), (xl + 1.45, y), color=c)
        arrow(ax, (xm + 1.3, y), (xr - 1.85, y), color=c)
    arrow(ax, (xm, 4.38), (xm, yi + 0.4), color=INTER, lw=1.8)
    label(ax, xm + 0.12, 4.12, "weighted sum", size=11, color=INTER, ha="left")
    box(ax, xm, yi, 3.6, 0.8, "$s_{inter}=w_1 s_{dense}+w_2 s_{lex}+w_3 s_{mul}$", color=INTER, size=12.5)
    box(ax, xl, yi, 2.9, 0.72, "$\\mathcal{L}_{inter}$  InfoNCE", color=INTER, size=13)
    arrow(ax, (xm - 1.8, yi), (xl + 1.45, yi), color=INTER)
    xtc = xr + 0.45  # the teacher box, shifted right to leave room for the L' arrow
    box(ax, xtc, yi, 3.1, 0.8, "teacher $\\mathrm{softmax}(s_{inter})$\nno gradient", color=INTER, size=12,
        ls="--")
    arrow(ax, (xm + 1.8, yi), (xtc - 1.55, yi), color=INTER)
    # the teacher's soft targets go up into every L'
    xt = xr + 2.3
    line(ax, [xtc + 1.55, xt], [yi, yi], color=INTER, ls="--")
    line(ax, [xt, xt], [yi, rows[0][0]], color=INTER, ls="--")
    for y, _, _ in rows:
        arrow(ax, (xt, y), (xr + 1.85, y), color=INTER, ls="--", head=10)
    ax.text(xt + 0.2, 5.95, "soft targets $p(s_{inter})$", rotation=90, ha="center", va="center", fontsize=11,
            color=INTER, zorder=5)
    # sums
    yb = 2.0
    box(ax, xl, yb, 4.9, 0.8,
        "$\\mathcal{L}=(\\lambda_1\\mathcal{L}_{dense}+\\lambda_2\\mathcal{L}_{lex}+\\lambda_3\\mathcal{L}_{mul}+\\mathcal{L}_{inter})\\,/\\,4$",
        color=INK, fill="white", size=12.5)
    box(ax, xr, yb, 4.6, 0.8, "$\\mathcal{L}'=\\lambda_1\\mathcal{L}'_{dense}+\\lambda_2\\mathcal{L}'_{lex}+\\lambda_3\\mathcal{L}'_{mul}$",
        color=INK, fill="white", size=12.5)
    label(ax, xr, yb - 0.6, "the official code also divides $\\mathcal{L}'$ by 3", size=10.5)
    arrow(ax, (xl, 3.08), (xl, yb + 0.42), color=GREY)
    line(ax, [xr - 1.6, xr - 1.6], [4.38, yi + 0.16], color=GREY)  # a gap where it crosses the teacher arrow
    arrow(ax, (xr - 1.6, yi - 0.16), (xr - 1.6, yb + 0.42), color=GREY)
    box(ax, xm, 0.72, 3.2, 0.78, "$\\mathcal{L}_{final}=(\\mathcal{L}+\\mathcal{L}')\\,/\\,2$", color=INK,
        fill="white", size=14, weight="bold", lw=2.2)
    arrow(ax, (xl, yb - 0.42), (xm - 1.62, 0.78), color=GREY, rad=0.25)
    arrow(ax, (xr, yb - 0.85), (xm + 1.62, 0.78), color=GREY, rad=-0.25)


# ---------------------------------------------------------------- figure 3: split batch

@figure("m3_split_batch", (13.0, 6.6))
def split_batch(ax):
    label(ax, 3.8, 6.25, "one GPU: a large batch in sub-batches", size=13.5, color=INK, weight="bold")
    # the batch: 12 texts sorted by length, cut into three sub-batches
    lengths = [0.9, 1.0, 1.1, 1.15, 1.3, 1.4, 1.5, 1.55, 1.7, 1.8, 1.9, 2.0]
    shades = ["#e5e7eb", "#d1d5db", "#9ca3af"]
    y0 = 5.55
    for i, L in enumerate(lengths):
        y = y0 - i * 0.36 - (i // 4) * 0.25
        ax.add_patch(Rectangle((0.3, y - 0.13), L, 0.26, facecolor=shades[i // 4], edgecolor=GREY,
                               linewidth=0.8, zorder=3))
    label(ax, 1.3, 0.55, "texts sorted by length", size=11)
    centres = [y0 - 0.54 - k * (4 * 0.36 + 0.25) for k in range(3)]
    for k, yc in enumerate(centres):
        top, bottom = yc + 0.54 + 0.13, yc - 0.54 - 0.13
        line(ax, [2.4, 2.5, 2.5, 2.4], [top, top, bottom, bottom], color=GREY, lw=1.2)
        arrow(ax, (2.5, yc), (2.7, yc), color=GREY)
        box(ax, 4.0, yc, 2.6, 1.05, f"sub-batch {k + 1}:\nencoder + heads,\ngradient checkpointing",
            color=GREY, fill=PALE, size=11.5)
        cells(ax, 5.75, yc - 0.3, 1, 0.36, 0.6, DENSE)
        cells(ax, 6.11, yc - 0.3, 1, 0.36, 0.6, LEX)
        cells(ax, 6.47, yc - 0.3, 1, 0.36, 0.6, MUL)
        arrow(ax, (5.3, yc), (5.7, yc), color=GREY)
        arrow(ax, (6.88, yc), (7.45, 3.25 + (1 - k) * 0.5), color=GREY, lw=1.2, head=9)
    label(ax, 4.0, 0.55, "run one after another;\nonly inputs and outputs kept", size=11)
    label(ax, 6.65, 0.55, "embeddings:\ndense, lexical, multi-vector", size=11)
    box(ax, 8.2, 3.25, 1.4, 2.3, "all\nembeddings\nof the\nbatch", color=INK, fill="white", size=11.5)
    arrow(ax, (8.9, 3.25), (9.35, 3.25), color=GREY)
    box(ax, 10.05, 3.25, 1.3, 2.3, "scores\nand loss\nover the\nwhole\nbatch", color=INTER, size=11.5)
    arrow(ax, (10.7, 3.25), (11.1, 3.25), color=GREY)
    box(ax, 11.95, 3.25, 1.6, 1.0, "backward:\nre-run each\nsub-batch", color=GREY, fill=PALE, size=11)
    label(ax, 10.6, 6.25, "the loss sees every text", size=13.5, color=INK, weight="bold")
    label(ax, 10.6, 1.55, "gradients equal those\nof the full batch", size=11)


@figure("m3_cross_device", (11.6, 4.8))
def cross_device(ax):
    label(ax, 5.8, 4.4, "cross-device negatives: every GPU scores the passages of all GPUs", size=13.5,
          color=INK, weight="bold")
    W, B, G = 2, 2, 2  # GPUs, queries per GPU, passages per query
    box(ax, 1.25, 3.0, 1.9, 1.15, f"GPU 0\n{B} queries\n{B * G} passages", color=GREY, fill=PALE, size=11.5)
    box(ax, 1.25, 1.0, 1.9, 1.15, f"GPU 1\n{B} queries\n{B * G} passages", color=GREY, fill=PALE, size=11.5)
    x0, y0, c = 4.2, 2.45, 0.58  # GPU 0's score matrix: its queries x all W*B*G passages
    cols = W * B * G
    for i in range(B):
        for j in range(cols):
            pos = j == i * G
            ax.add_patch(Rectangle((x0 + j * c, y0 + (B - 1 - i) * c), c, c,
                                   facecolor=INTER if pos else (LIGHT[INTER] if j < B * G else "white"),
                                   edgecolor=INTER, linewidth=1.0, zorder=3))
    label(ax, x0 + B * G * c / 2, y0 + B * c + 0.3, "GPU 0's own passages", size=11)
    label(ax, x0 + B * G * c * 1.5, y0 + B * c + 0.3, "GPU 1's passages", size=11)
    arrow(ax, (2.2, 3.0), (x0 - 0.08, y0 + c), color=GREY)
    label(ax, 3.2, 3.3, "its $B$ queries\n(rows)", size=11)
    arrow(ax, (2.2, 1.0), (x0 + B * G * c * 1.5, y0 - 0.08), color=INTER, ls="--")
    label(ax, 5.6, 1.2, "all_gather of GPU 1's passages\n(gradients flow back)", size=11, color=INTER, ha="left")
    label(ax, x0 + cols * c + 0.25, y0 + c,
          "each query: 1 positive (dark)\nand $W\\cdot B\\cdot G-1$ negatives\n($W$ GPUs, $B$ queries each,\n"
          "$G$ passages per query)", size=11, color=INK, ha="left")
    label(ax, x0 + cols * c + 0.25, y0 - 0.75, "the official code gathers\nfor $s_{dense}$ only", size=10.5,
          ha="left")


# ---------------------------------------------------------------- figure 4: MCLS

@figure("m3_mcls", (12.0, 5.9))
def mcls(ax):
    # [CLS] chunk [CLS] chunk [CLS] chunk ... </s>
    x = 0.4
    cls_x = []
    for k in range(3):
        box(ax, x + 0.4, 0.9, 0.8, 0.55, "[CLS]", color=DENSE, size=11)
        cls_x.append(x + 0.4)
        box(ax, x + 2.0, 0.9, 2.2, 0.55, "256 tokens", color=GREY, fill=PALE, size=11.5)
        x += 3.3
    label(ax, x + 0.25, 0.9, "...", size=16, color=INK)
    box(ax, x + 1.05, 0.9, 0.8, 0.55, "</s>", color=GREY, size=11)
    label(ax, 6.1, 0.22, "a long document: one [CLS] before every 256 tokens", size=11.5)
    box(ax, 6.1, 2.1, 11.4, 0.9, "encoder (attention over the whole document)", color=GREY, fill=PALE,
        size=12.5)
    for k, cx in enumerate(cls_x):
        arrow(ax, (cx, 1.18), (cx, 1.65), color=DENSE, lw=1.2, head=9)
        arrow(ax, (cx, 2.55), (cx, 3.0), color=DENSE, lw=1.2, head=9)
        box(ax, cx, 3.27, 1.15, 0.52, f"$h_{{[CLS]_{k + 1}}}$", color=DENSE, fill="white", size=12.5)
    xc = (cls_x[0] + cls_x[-1]) / 2
    line(ax, [cls_x[0], cls_x[-1]], [3.85, 3.85], color=DENSE)
    for cx in cls_x:
        line(ax, [cx, cx], [3.52, 3.85], color=DENSE, lw=1.2)
    arrow(ax, (xc, 3.85), (xc, 4.3), color=DENSE)
    label(ax, xc + 0.15, 4.07, "mean", size=11, color=DENSE, ha="left")
    box(ax, xc, 4.72, 4.4, 0.8, "$e_p=\\mathrm{norm}\\left(\\frac{1}{K}\\sum_{k=1}^{K} h_{[CLS]_k}\\right)$",
        color=DENSE, size=13)
    label(ax, xc + 2.45, 4.72, "the dense vector of the document\n(without MCLS: only $h_{[CLS]_1}$)", size=11.5,
          color=INK, ha="left")
    label(ax, 6.1, 5.55, "MCLS (multiple [CLS]): the dense vector of a long text", size=13.5, color=INK,
          weight="bold")


# ---------------------------------------------------------------- figure 5: retrieval pipeline

@figure("m3_retrieval_pipeline", (13.0, 7.6))
def retrieval(ax):
    box(ax, 3.3, 6.95, 6.2, 0.75, "query $q$: one encoder pass gives $e_q$, $w_{q_t}$ and $E_q$",
        color=INK, fill="white", size=12.5)
    box(ax, 9.85, 6.95, 6.1, 0.75, "corpus, encoded once: all $e_p$, an inverted index\n"
        "$t \\rightarrow (p,\\ w_{p_t})$, and every passage's $E_p$", color=INK, fill="white", size=11.5)
    label(ax, 1.15, 6.0, "ranking", size=12.5, color=INK, weight="bold")
    label(ax, 4.55, 6.0, "candidates", size=12.5, color=INK, weight="bold")
    label(ax, 9.05, 6.0, "score that orders them", size=12.5, color=INK, weight="bold")
    lanes = [
        ("Dense", DENSE, "dense top-1000\n(exact $\\langle e_q, e_p\\rangle$ over all $p$)", DENSE, "$s_{dense}$", DENSE),
        ("Sparse", LEX, "lexical top-1000\n(inverted index)", LEX, "$s_{lex}$", LEX),
        ("Dense+\nSparse", INK, "union of the dense and\nthe lexical top-1000", GREY,
         "$w_1 s_{dense} + w_2 s_{lex}$", INK),
        ("Multi-vec", MUL, "dense top-200", DENSE, "$s_{mul}$ (re-rank)", MUL),
        ("All", INTER, "dense top-200", DENSE, "$w_1 s_{dense} + w_2 s_{lex} + w_3 s_{mul}$", INTER),
    ]
    ys = [5.2, 4.15, 3.1, 2.05, 1.0]
    for y, (name, nc, cand, cc, score, sc) in zip(ys, lanes):
        label(ax, 1.15, y, name, size=12.5, color=nc, weight="bold")
        box(ax, 4.55, y, 3.6, 0.82, cand, color=cc, size=11.5)
        box(ax, 9.05, y, 4.4, 0.82, score, color=sc, size=12.5)
        arrow(ax, (6.35, y), (6.85, y), color=GREY)
        line(ax, [11.25, 11.55], [y, y], color=GREY)
    line(ax, [11.55, 11.55], [ys[0], ys[-1]], color=GREY)
    arrow(ax, (11.55, 3.1), (11.85, 3.1), color=GREY)
    box(ax, 12.4, 3.1, 1.05, 2.3, "trec_eval\nnDCG@10\nRecall\n@100", color=INK, fill="white", size=11)
    label(ax, 6.6, 0.2, "$w_1, w_2, w_3$: the hybrid weights, e.g. (1, 0.3, 1) on MIRACL and MKQA", size=11)


# ---------------------------------------------------------------- output

def render(out_dir: str = HERE, png: bool = False) -> list[str]:
    """Draw every figure into out_dir (SVG, and PNG if asked); return the file names written."""
    written = []
    with plt.rc_context(STYLE):
        for name, (draw, size) in FIGURES.items():
            fig, ax = canvas(size)
            draw(ax)
            fig.savefig(os.path.join(out_dir, name + ".svg"),
                        metadata={"Date": None, "Creator": "book/figures/make_figures.py",
                                  "Description": f"matplotlib {matplotlib.__version__}"})
            written.append(name + ".svg")
            if png:
                fig.savefig(os.path.join(out_dir, name + ".png"), dpi=110, metadata={"Software": None})
                written.append(name + ".png")
            plt.close(fig)
    return written


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--png"]
    out = args[0] if args else HERE
    os.makedirs(out, exist_ok=True)
    for f in render(out, png="--png" in sys.argv[1:]):
        print(os.path.join(out, f))
