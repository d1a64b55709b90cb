"""Building blocks of the world simulator (`detector simulate`, see detector/simulate.py)."""
