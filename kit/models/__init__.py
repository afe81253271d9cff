"""The estimators: one interface (base.py), a registry that picks the class (registry.py), and the roads."""
