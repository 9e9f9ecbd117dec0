"""Contact sheet: the query image, then its top-k training images with rank, score and caption (Pillow).

A sheet is written only where the user named it: never inside the project (only commits write there), never over
an existing file unless asked (`force`), never into a folder that does not exist.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from dmin.errors import UsageError
from dmin.query import QueryResult, load_training_image
from dmin.store import Project
from dmin.store.atomic import write_bytes_atomic
from dmin.store.manifest import create_exclusive

TILE = 128
LABEL_H = 34


def check_sheet_path(project_dir: str | Path, path: str | Path, force: bool = False) -> Path:
    """`path` when a sheet may be written there; else a UsageError naming the problem and the fix."""
    target = Path(path).resolve()
    if target.is_relative_to(Path(project_dir).resolve()):
        raise UsageError(
            f"--sheet {path}: inside the project, where only dmin's commits write; choose a path outside it"
        )
    if target.is_dir():
        raise UsageError(f"--sheet {path}: is a directory; give a file name such as top10.png")
    if not target.parent.is_dir():
        raise UsageError(f"--sheet {path}: no such directory {target.parent}; create it first")
    if target.exists() and not force:
        raise UsageError(f"--sheet {path}: exists; pass --force to replace it, or choose another name")
    return target


def render_sheet(project: Project, result: QueryResult, query_image: Image.Image) -> bytes:
    """The sheet as PNG bytes: k+1 tiles in one row, the query's outlined in red."""
    tiles: list[tuple[Image.Image | None, str, str]] = [
        (query_image, f"query {result.query_id[:10]}", result.method + f" v={result.v}")
    ]
    for r in result.results:
        img = load_training_image(project, r["sample_id"], str(r.get("source", "")))
        caption = r.get("caption") or (f"label {r['label']}" if r.get("label") is not None else "")
        tiles.append((img, f"#{r['rank']}  {r['score']:.3f}", str(caption)[:22]))
    sheet = Image.new("RGB", (TILE * len(tiles), TILE + LABEL_H), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, (img, top, bottom) in enumerate(tiles):
        x = i * TILE
        if img is not None:
            sheet.paste(img.convert("RGB").resize((TILE - 4, TILE - 4), Image.Resampling.NEAREST), (x + 2, 2))
        else:
            draw.rectangle((x + 2, 2, x + TILE - 3, TILE - 3), outline="gray")
            draw.text((x + 10, TILE // 2), "image missing", fill="gray", font=font)
        if i == 0:
            draw.rectangle((x, 0, x + TILE - 1, TILE - 1), outline="red", width=2)
        draw.text((x + 4, TILE + 2), top, fill="black", font=font)
        draw.text((x + 4, TILE + 17), bottom, fill="dimgray", font=font)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def contact_sheet(
    project: Project, result: QueryResult, query_image: Image.Image, out: str | Path, force: bool = False
) -> Path:
    """Write the sheet to `out` (checked by `check_sheet_path`); an existing file is replaced only with `force`,
    and a file that appeared meanwhile is never overwritten without it."""
    target = check_sheet_path(project.root, out, force)
    data = render_sheet(project, result, query_image)
    if force:
        write_bytes_atomic(target, data)
    elif not create_exclusive(target, data):
        raise UsageError(f"--sheet {out}: exists; pass --force to replace it, or choose another name")
    return target
