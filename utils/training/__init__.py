"""train.py's run: trainer (phases, optimizer, data), callbacks, configuration."""
