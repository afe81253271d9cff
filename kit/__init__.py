"""kit: from a competition's train/test CSVs to a valid submit.csv and an honest CV score."""
__version__ = "0.1.0"
