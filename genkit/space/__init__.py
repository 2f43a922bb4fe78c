"""The genkit Gradio app (app.py here is a Space's entry point, linked as spaces/app.py): sample, denoise and explore genkit models.

As a public Space: only listed models (GENKIT_MODELS or space.json) and, unless GENKIT_ALLOW_HUB=0, Hub ids of genkit models,
within the GENKIT_MAX_* limits (`limits.Settings`, `genkit.safe_load.Limits`); requests wait in bounded, priced queues
(`queue`). Locally (`genkit app RUN_DIR`, or GENKIT_SPACE=0): any run directory or Hub id, with no limits.
"""

from .ui import build_demo, space_policy

__all__ = ["build_demo", "space_policy"]
