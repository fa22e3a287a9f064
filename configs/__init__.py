"""The experiment configs, one file per task setting (`--config configs/X.py:...`).

Installed as the package `ftjax.configs`, so that `python -m ftjax.main` finds its
default config without the source tree (`pip install .`)."""
