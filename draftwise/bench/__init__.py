"""How a run is measured: test prompts and the harness that times methods side by side."""
