"""Performance benchmarks of gmsearch (``python benchmarks/run.py [--quick] [--device cpu|cuda]``)."""
