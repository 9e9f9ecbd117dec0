"""Contact sheet: the query image, then its top-k training images with rank, score and caption (Pillow)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from dmin.query import QueryResult, load_training_image
from dmin.store import Project

TILE = 128
LABEL_H = 34


def contact_sheet(project: Project, result: QueryResult, query_image: Image.Image, out: str | Path) -> Path:
    """Write a PNG with k+1 tiles in one row; returns its path."""
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
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG")
    return out
