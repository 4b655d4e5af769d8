"""``caffe.draw``'s own drawing of a net's graph, for machines without Graphviz's ``dot`` program.

The pydot graph ``caffe.draw`` builds (layer boxes, blob octagons, the plain ellipses of blobs that are only
tops, as dot draws them; edges with labels) is laid out in ranks:
each node one rank after its furthest predecessor (a depth-first search drops the edges that close a
cycle: an in-place layer's blob -> layer -> same blob), nodes within a rank ordered by the mean position of
their predecessors, ranks along ``rankdir`` (LR, RL, TB, BT). Drawn with OpenCV (PNG, JPEG, BMP, TIFF),
as SVG text, or as a one-page PDF through Pillow. Not dot's layout (no edge routing around nodes, no
crossing minimisation beyond the one ordering pass), but every layer, blob, edge and label is there.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RASTER = ("png", "jpg", "jpeg", "jpe", "bmp", "tif", "tiff")
FORMATS = RASTER + ("svg", "pdf")
_FONT_SCALE, _LINE_H, _PAD, _GAP_RANK, _GAP_NODE = 0.45, 16, 8, 48, 16


@dataclass
class _Node:
    lines: list[str]
    fill: str
    shape: str  # "box" (layers: dot's record), "octagon" (blobs), "ellipse" (dot's default: unstyled tops)
    w: int = 0
    h: int = 0
    x: float = 0.0  # centre
    y: float = 0.0
    rank: int = 0
    preds: list[str] = field(default_factory=list)


def _unquote(s: str) -> str:
    return s[1:-1] if len(s) >= 2 and s[0] == s[-1] == '"' else s


def _nodes_and_edges(graph: Any) -> tuple[dict[str, _Node], list[tuple[str, str, str]]]:
    import cv2

    nodes: dict[str, _Node] = {}
    for n in graph.get_nodes():
        name = n.get_name()
        if name in ("node", "edge", "graph"):
            continue
        attrs = n.get_attributes()
        lines = _unquote(name).split("\\n")
        fill = _unquote(str(attrs.get("fillcolor", "#FFFFFF")))
        shape = {"octagon": "octagon", None: "ellipse"}.get(attrs.get("shape"), "box")
        node = _Node(lines, fill, shape)
        sizes = [cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, _FONT_SCALE, 1)[0] for t in lines]
        node.w = max(w for w, _ in sizes) + 2 * _PAD + {"box": 0, "octagon": 12, "ellipse": 20}[shape]
        node.h = _LINE_H * len(lines) + 2 * _PAD
        nodes[name] = node
    edges = []
    for e in graph.get_edges():
        src, dst = e.get_source(), e.get_destination()
        for end in (src, dst):
            nodes.setdefault(end, _Node([_unquote(end)], "#FFFFFF", "ellipse", 60, _LINE_H + 2 * _PAD))
        label = _unquote(str(e.get_attributes().get("label", "")))
        edges.append((src, dst, label))
    return nodes, edges


def _rank(nodes: dict[str, _Node], edges: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Ranks by longest path over the edges that do not close a cycle; returns those edges."""
    out: dict[str, list[str]] = {k: [] for k in nodes}
    for s, d, _ in edges:
        out[s].append(d)
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    back: set[tuple[str, str]] = set()
    order: list[str] = []
    for root in nodes:
        if root in state:
            continue
        stack = [(root, iter(out[root]))]
        state[root] = 1
        while stack:
            v, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[v] = 2
                order.append(v)
                stack.pop()
            elif state.get(nxt) == 1:
                back.add((v, nxt))
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(out[nxt])))
    forward = [(s, d, lab) for s, d, lab in edges if (s, d) not in back and s != d]
    for s, d, _ in forward:
        nodes[d].preds.append(s)
    for v in reversed(order):  # a topological order of the forward edges
        nodes[v].rank = max((nodes[p].rank + 1 for p in nodes[v].preds), default=0)
    return forward


def layout(graph: Any, rankdir: str) -> tuple[dict[str, _Node], list[tuple[str, str, str]], int, int]:
    """Nodes with centres, the edges drawn, and the canvas size."""
    nodes, edges = _nodes_and_edges(graph)
    _rank(nodes, edges)
    ranks: dict[int, list[str]] = {}
    for name, n in nodes.items():
        ranks.setdefault(n.rank, []).append(name)
    horizontal = rankdir in ("LR", "RL")
    pos: dict[str, float] = {}
    for r in sorted(ranks):
        members = ranks[r]
        if r:  # the barycentre of each node's predecessors' slots (stable: ties keep their order)
            members.sort(key=lambda k: np.mean([pos[p] for p in nodes[k].preds]) if nodes[k].preds else 1e9)
        for i, k in enumerate(members):
            pos[k] = i
    along = [max((nodes[k].w if horizontal else nodes[k].h) for k in ranks[r]) for r in sorted(ranks)]
    across = [sum((nodes[k].h if horizontal else nodes[k].w) + _GAP_NODE for k in ranks[r]) for r in sorted(ranks)]
    extent = max(across) + _GAP_NODE
    start = _GAP_RANK // 2
    for r, size in zip(sorted(ranks), along):
        used = across[r]
        c = (extent - used) / 2 + _GAP_NODE / 2
        for k in ranks[r]:
            n = nodes[k]
            cross = n.h if horizontal else n.w
            a, b = start + size / 2, c + cross / 2
            n.x, n.y = (a, b) if horizontal else (b, a)
            c += cross + _GAP_NODE
        start += size + _GAP_RANK
    width, height = (start, extent) if horizontal else (extent, start)
    if rankdir in ("RL", "BT"):
        for n in nodes.values():
            if rankdir == "RL":
                n.x = width - n.x
            else:
                n.y = height - n.y
    return nodes, edges, int(width), int(height)


def _parallel(edges: list[tuple[str, str, str]]) -> list[int]:
    """Per edge, how many earlier edges join the same two nodes (their labels go one line lower each)."""
    seen: dict[tuple[str, str], int] = {}
    out = []
    for s, d, _ in edges:
        out.append(seen.get((s, d), 0))
        seen[(s, d)] = out[-1] + 1
    return out


def _bgr(hex_color: str) -> tuple[int, int, int]:
    h = hex_color.lstrip("#")
    if len(h) != 6:
        return (224, 224, 224)
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return (b, g, r)


def _border(n: _Node, tx: float, ty: float) -> tuple[float, float]:
    """Where the line from ``n``'s centre towards (tx, ty) leaves its box."""
    dx, dy = tx - n.x, ty - n.y
    if dx == 0 and dy == 0:
        return n.x, n.y
    s = min((n.w / 2) / abs(dx) if dx else np.inf, (n.h / 2) / abs(dy) if dy else np.inf)
    return n.x + dx * s, n.y + dy * s


def _octagon(n: _Node) -> np.ndarray:
    c = min(8, n.h // 3)
    x0, x1, y0, y1 = n.x - n.w / 2, n.x + n.w / 2, n.y - n.h / 2, n.y + n.h / 2
    return np.array([(x0 + c, y0), (x1 - c, y0), (x1, y0 + c), (x1, y1 - c), (x1 - c, y1), (x0 + c, y1),
                     (x0, y1 - c), (x0, y0 + c)])


def _raster(graph: Any, rankdir: str) -> np.ndarray:
    import cv2

    nodes, edges, width, height = layout(graph, rankdir)
    img = np.full((height, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for (s, d, label), k in zip(edges, _parallel(edges)):
        a, b = nodes[s], nodes[d]
        p, q = _border(a, b.x, b.y), _border(b, a.x, a.y)
        cv2.arrowedLine(img, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), (60, 60, 60), 1, cv2.LINE_AA,
                        tipLength=min(0.3, 8 / max(1.0, float(np.hypot(q[0] - p[0], q[1] - p[1])))))
        if label:
            cv2.putText(img, label, (int((p[0] + q[0]) / 2) + 2, int((p[1] + q[1]) / 2) - 3 + k * _LINE_H), font, 0.4,
                        (0, 0, 0), 1, cv2.LINE_AA)
    for n in nodes.values():
        color = _bgr(n.fill)
        if n.shape == "octagon":
            pts = _octagon(n).astype(np.int32)
            cv2.fillPoly(img, [pts], color)
            cv2.polylines(img, [pts], True, (0, 0, 0), 1, cv2.LINE_AA)
        elif n.shape == "ellipse":
            axes = (int(n.w / 2), int(n.h / 2))
            cv2.ellipse(img, (int(n.x), int(n.y)), axes, 0, 0, 360, color, cv2.FILLED)
            cv2.ellipse(img, (int(n.x), int(n.y)), axes, 0, 0, 360, (0, 0, 0), 1, cv2.LINE_AA)
        else:
            p0, p1 = (int(n.x - n.w / 2), int(n.y - n.h / 2)), (int(n.x + n.w / 2), int(n.y + n.h / 2))
            cv2.rectangle(img, p0, p1, color, cv2.FILLED)
            cv2.rectangle(img, p0, p1, (0, 0, 0), 1)
        top = n.y - n.h / 2 + _PAD
        for i, t in enumerate(n.lines):
            tw = cv2.getTextSize(t, font, _FONT_SCALE, 1)[0][0]
            cv2.putText(img, t, (int(n.x - tw / 2), int(top + (i + 1) * _LINE_H - 4)), font, _FONT_SCALE, (0, 0, 0), 1,
                        cv2.LINE_AA)
    return img


def _svg(graph: Any, rankdir: str) -> bytes:
    nodes, edges, width, height = layout(graph, rankdir)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="Helvetica,Arial,sans-serif" font-size="12">',
           '<defs><marker id="a" markerWidth="8" markerHeight="8" refX="8" refY="4" orient="auto">'
           '<path d="M0,0 L8,4 L0,8 z"/></marker></defs>', f'<rect width="{width}" height="{height}" fill="white"/>']
    for (s, d, label), k in zip(edges, _parallel(edges)):
        a, b = nodes[s], nodes[d]
        p, q = _border(a, b.x, b.y), _border(b, a.x, a.y)
        out.append(f'<line x1="{p[0]:.1f}" y1="{p[1]:.1f}" x2="{q[0]:.1f}" y2="{q[1]:.1f}" stroke="#3c3c3c" '
                   'marker-end="url(#a)"/>')
        if label:
            out.append(f'<text x="{(p[0] + q[0]) / 2 + 2:.1f}" y="{(p[1] + q[1]) / 2 - 3 + k * _LINE_H:.1f}">'
                       f'{html.escape(label)}</text>')
    for n in nodes.values():
        if n.shape == "octagon":
            pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in _octagon(n))
            out.append(f'<polygon points="{pts}" fill="{n.fill}" stroke="black"/>')
        elif n.shape == "ellipse":
            out.append(f'<ellipse cx="{n.x:.1f}" cy="{n.y:.1f}" rx="{n.w / 2:.1f}" ry="{n.h / 2:.1f}" fill="{n.fill}" '
                       'stroke="black"/>')
        else:
            out.append(f'<rect x="{n.x - n.w / 2:.1f}" y="{n.y - n.h / 2:.1f}" width="{n.w}" height="{n.h}" '
                       f'fill="{n.fill}" stroke="black"/>')
        top = n.y - n.h / 2 + _PAD
        for i, t in enumerate(n.lines):
            out.append(f'<text x="{n.x:.1f}" y="{top + (i + 1) * _LINE_H - 4:.1f}" text-anchor="middle">'
                       f'{html.escape(t)}</text>')
    out.append("</svg>\n")
    return "\n".join(out).encode("utf-8")


def render(graph: Any, ext: str, rankdir: str) -> bytes:
    """The graph drawn in ``ext`` (one of ``FORMATS``) without Graphviz."""
    import cv2

    ext = ext.lower()
    if ext == "svg":
        return _svg(graph, rankdir)
    img = _raster(graph, rankdir)
    if ext == "pdf":
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(img[:, :, ::-1]).save(buf, format="PDF")
        return buf.getvalue()
    ok, data = cv2.imencode("." + ext, img)
    if not ok:
        raise RuntimeError(f"caffe.draw: OpenCV could not encode the drawing as {ext}")
    return data.tobytes()
