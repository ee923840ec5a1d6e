"""One small job per tab through gradio_client, for the Space checks (tests/test_space.py): the embedded model at
64 px (uploads at its native 128) and 2 steps, so a whole round stays within seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

from gradio_client import Client, handle_file
from PIL import Image

SIZE, PICTURE, STEPS = 64, 128, 2
SOURCE, TARGET = "a red circle on a blue background", "a red square on a blue background"
TABS = ("generate", "structure", "invert", "sdedit", "diffedit", "p2p", "personalize")


def picture(folder: Path) -> str:
    """A red disc on blue at the embedded model's size, as a file to upload."""
    path = folder / "disc.png"
    image = Image.new("RGB", (PICTURE, PICTURE), (30, 60, 200))
    centre, radius = PICTURE // 2, PICTURE // 4
    for x in range(PICTURE):
        for y in range(PICTURE):
            if (x - centre) ** 2 + (y - centre) ** 2 < radius ** 2:
                image.putpixel((x, y), (210, 30, 30))
    image.save(path)
    return str(path)


def run_tab(client: Client, tab: str, image: str) -> tuple:
    """The outputs of one small job of `tab` (one of TABS)."""
    editor = {"background": handle_file(image), "layers": [], "composite": handle_file(image)}
    if tab == "generate":
        return client.predict(api_name="/generate", prompt=SOURCE, steps=STEPS, width=SIZE, height=SIZE, seed=1,
                              random_seed=False)
    if tab == "structure":
        return client.predict(api_name="/structure", prompt=SOURCE, canvas=editor, steps=STEPS, seed=1,
                              random_seed=False)
    if tab == "invert":
        return client.predict(api_name="/invert", upload=handle_file(image), prompt=SOURCE, methods=["ddim"],
                              steps=STEPS)
    if tab == "sdedit":
        return client.predict(api_name="/sdedit", canvas=editor, prompt=SOURCE, steps=STEPS, seed=1,
                              random_seed=False)
    if tab == "diffedit":
        return client.predict(api_name="/diffedit", image=handle_file(image), source_prompt=SOURCE,
                              target_prompt=TARGET, steps=STEPS, seed=1, mask=None)
    if tab == "p2p":
        return client.predict(api_name="/p2p", source_prompt=SOURCE, target_prompt=TARGET, edit="word swap",
                              steps=STEPS, seed=1)
    if tab == "personalize":
        rendered = client.predict(api_name="/personalize_render", concept="star", count=3, seed=0)
        pictures = [{"image": handle_file(item["image"]), "caption": item["caption"]} for item in rendered]
        return client.predict(api_name="/personalize", images=pictures, method="textual-inversion", concept="star",
                              class_word="circle", steps=STEPS, sample_every=STEPS, seed=0)
    raise ValueError(f"no job for tab {tab!r}; one of {', '.join(TABS)}")
