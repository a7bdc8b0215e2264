"""The packaged configs (package data ``lightning_mem.configs``; see lightning_mem/cli/packaged.py)."""
