import sys
from pathlib import Path

DISTILL = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(DISTILL))
