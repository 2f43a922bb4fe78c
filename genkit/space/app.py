"""genkit Space: sample, denoise and explore the latents of genkit models (the app itself is the `genkit.space` package).

As a public Space (the default for `python spaces/app.py`): only the models its owner lists in GENKIT_MODELS (or
`space.json` beside this file) and, unless GENKIT_ALLOW_HUB=0, Hub ids of genkit models, within the GENKIT_MAX_*
limits. Locally (`genkit app RUN_DIR`, or GENKIT_SPACE=0): any run directory or Hub id.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from genkit.space import build_demo
from genkit.space.ui import space_policy as _space_policy


def space_policy():
    """Space mode (the default here) unless GENKIT_SPACE=0; `space.json` beside this file holds the owner's defaults."""
    return _space_policy(Path(__file__).with_name("space.json"))


demo = build_demo(os.environ.get("GENKIT_RUN"), space_policy())

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")  # refusals: one line each
    demo.launch()
