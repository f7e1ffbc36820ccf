# Makes this checkout's `elude` package importable in any job environment (conda envs do not install it).
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
