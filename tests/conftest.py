import sys
from pathlib import Path

# the tiny test environment (tests/tiny_env.py) is imported by name
sys.path.insert(0, str(Path(__file__).resolve().parent))
