"""The packaged sweep files (package data ``lightning_mem.sweep_files``; see cli/packaged.py)."""
