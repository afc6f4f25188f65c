"""Command-line front end (placeholder until its issue lands)."""
import sys

if __name__ == "__main__":
    sys.exit("eval_map.py is not implemented yet in this checkout")
