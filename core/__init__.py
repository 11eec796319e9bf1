"""reelmask engine: frame folders, prompts, models, modes and outputs.

Importing this package is cheap: torch, sam2 and ultralytics load only inside the model adapters.
"""

__version__ = "0.1.0"
